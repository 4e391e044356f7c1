"""Tagger training (PyTorch) -> ONNX component -> torch-free Tagger, on synthetic features; the experiment CLI on
the session's tiny Tux Paint run."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from xlsearch.bundle.components import read_component  # noqa: E402
from xlsearch.bundle.tagger import Tagger, TagInputError, TagScore, UnknownTagError  # noqa: E402
from xlsearch.data.manifest import Manifest, Record  # noqa: E402
from xlsearch.encode.tag_vocab import extract_image_tags  # noqa: E402
from xlsearch_training.tagging.component import train_tagger_component  # noqa: E402
from xlsearch_training.tagging.config import TaggerConfig  # noqa: E402
from xlsearch_training.tagging.data import tag_data  # noqa: E402
from xlsearch_training.tagging.evaluate import evaluate_modes  # noqa: E402
from xlsearch_training.tagging.train import fit_tagger  # noqa: E402

DIM = 24
TAGS = [("狗", "dog"), ("猫", "cat"), ("鸟", "bird"), ("树", "tree"), ("船", "boat")]
TINY = {"hidden": 64, "epochs": 40, "lqp_hidden": [32], "lqp_epochs": 60, "batch_size": 16, "lr": 0.003}
INPUT_FEATURE = {"dim": DIM, "backbone": {"kind": "synthetic"}, "preprocess": {}}


def synthetic(n: int = 260, seed: int = 0) -> tuple[Manifest, dict[str, np.ndarray]]:
    """Images carry 1-3 of five tags (manual zh + en tags); a feature is the normalised sum of its tags' prototypes
    plus noise, so tags and their number are learnable."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(len(TAGS), DIM))
    records, features = [], {}
    for i in range(n):
        chosen = rng.choice(len(TAGS), size=rng.integers(1, 4), replace=False)
        split = "train" if i < 0.6 * n else "val" if i < 0.8 * n else "test"
        rid = f"img{i:03d}"
        records.append(
            Record(
                id=rid,
                image=f"{rid}.png",
                split=split,
                tags_zh=[TAGS[j][0] for j in chosen],
                tags_en=[TAGS[j][1] for j in chosen],
            )
        )
        v = protos[chosen].sum(axis=0) + 0.3 * rng.normal(size=DIM)
        features[rid] = (v / np.linalg.norm(v)).astype(np.float32)
    return Manifest(Path("."), records), features


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: extra threads only contend
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data() -> tuple[Manifest, dict[str, np.ndarray]]:
    return synthetic()


@pytest.fixture(scope="module")
def component(data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    manifest, features = data
    cfg = TaggerConfig.from_dict(
        {**TINY, "model": "cascade", "user_tags": True, "vocab": {"zh_min_count": 2}}
    )
    return train_tagger_component(
        manifest, features, tmp_path_factory.mktemp("tagger"), cfg, INPUT_FEATURE, 0
    )


@pytest.mark.parametrize("model", ["mlp", "multitask", "cascade"])
def test_models_learn_tags_and_counts(data, model: str) -> None:
    manifest, features = data
    trained = fit_tagger(manifest, features, TaggerConfig.from_dict({**TINY, "model": model}), seed=0)
    assert trained.zh_vocab.tags and set(trained.zh_vocab.tags) == {z for z, _ in TAGS}
    tags = extract_image_tags(manifest.records)
    result = evaluate_modes(
        trained, tag_data(manifest.split("test"), features, tags, trained.zh_vocab, trained.en_vocab)
    )
    assert result["oracle k"]["i_f1"] > 0.8
    assert result["oracle k"]["i_p"] == pytest.approx(result["oracle k"]["i_r"])
    assert result["k=5"]["r"] == pytest.approx(1.0)  # 5 tags in all: top 5 recalls everything
    assert result["LQP"]["i_f1"] > result["k=5"]["i_f1"]
    assert result["lqp"]["accuracy"] > 0.5 and result["lqp"]["mse"] < 0.5
    assert 1.5 < trained.mean_count < 2.5 and result["fixed_mean_k"] == 2


def test_component_files_and_onnx_parity(component: Path, data) -> None:
    spec = read_component(component)
    assert spec["kind"] == "tagger" and spec["model"] == "cascade"
    assert {p.name for p in component.iterdir()} >= {
        "tagger.onnx",
        "tags_zh.json",
        "tags_en.json",
        "component.json",
    }
    assert spec["onnx_parity_max_abs_diff"] < 1e-5
    assert spec["input_feature"] == INPUT_FEATURE
    assert spec["metrics"]["split"] == "test" and spec["metrics"]["LQP"]["i_f1"] > 0.6
    vocab = json.loads((component / "tags_zh.json").read_text(encoding="utf-8"))
    assert {t["tag"]: t["english"] for t in vocab["tags"]} == dict(TAGS)


def test_onnx_matches_pytorch_at_any_batch(data, tmp_path: Path) -> None:
    from xlsearch_training.tagging.component import export_tagger, onnx_parity

    manifest, features = data
    cfg = TaggerConfig.from_dict(
        {**TINY, "epochs": 3, "lqp_epochs": 3, "model": "multitask", "user_tags": True}
    )
    trained = fit_tagger(manifest, features, cfg, seed=1)
    onnx_path = export_tagger(trained.model, tmp_path / "t.onnx", DIM, len(trained.zh_vocab))
    x = np.stack([features[f"img{i:03d}"] for i in range(7)])
    for batch in (1, 7):
        user = (np.random.default_rng(batch).random((batch, len(trained.zh_vocab))) < 0.3).astype(np.float32)
        assert onnx_parity(trained.model, onnx_path, x[:batch], user) < 1e-5


def test_tagger_predicts_with_lqp_fixed_k_and_english(component: Path, data) -> None:
    manifest, features = data
    tagger = Tagger.load(component, read_component(component), intra_op_threads=1)
    assert sorted(tagger.vocabulary) == sorted(z for z, _ in TAGS)
    assert set(tagger.english_vocabulary) == {e for _, e in TAGS}
    test = manifest.split("test")
    x = np.stack([features[r.id] for r in test])
    auto = tagger.predict(x)
    assert len(auto) == len(test) and all(len(tags) >= 1 for tags in auto)
    zh, counts, en = tagger.scores(x)
    assert en is not None and en.shape == (len(test), len(TAGS))
    assert [len(t) for t in auto] == [max(1, int(np.rint(c))) for c in counts]
    hits = sum(len({t.tag for t in tags} & set(r.tags_zh)) for tags, r in zip(auto, test, strict=True))
    assert hits / sum(len(t) for t in auto) > 0.6
    fixed = tagger.predict(x[:3], k=4)
    assert [len(t) for t in fixed] == [4, 4, 4]
    first = fixed[0]
    assert isinstance(first[0], TagScore) and first[0].score >= first[1].score >= first[3].score
    english = dict(TAGS)
    assert all(t.english == english[t.tag] for tags in fixed for t in tags)
    assert tagger.predict(x[:1], k=99)[0].__len__() == len(TAGS)  # clamped to the vocabulary
    assert tagger.predict(np.zeros((0, DIM), np.float32)) == []


def test_user_tags_raise_their_own_score(component: Path, data) -> None:
    manifest, features = data
    tagger = Tagger.load(component, read_component(component), intra_op_threads=1)
    assert tagger.accepts_user_tags
    x = np.stack([features[r.id] for r in manifest.split("test")])
    base, _, _ = tagger.scores(x)
    j = int(np.argmin(base.mean(axis=0)))  # the tag the images look least like
    tag = tagger.vocabulary[j]
    given, _, _ = tagger.scores(x, [[tag]] * len(x))
    assert given[:, j].mean() > base[:, j].mean()
    ranked = tagger.predict(x[:2], k=5, user_tags=[[tag], []])
    assert len(ranked[0]) == 5


def test_bad_input(component: Path) -> None:
    tagger = Tagger.load(component, read_component(component), intra_op_threads=1)
    ok = np.ones((1, DIM), np.float32) / np.sqrt(DIM)
    with pytest.raises(TagInputError, match=r"\[batch, 24\]"):
        tagger.predict(np.ones((1, DIM + 1), np.float32))
    with pytest.raises(TagInputError, match=r"\[batch, 24\]"):
        tagger.predict(np.ones(DIM, np.float32))
    with pytest.raises(TagInputError, match="NaN"):
        tagger.predict(np.full((1, DIM), np.nan, np.float32))
    for k in (0, -1, 1.5, True):
        with pytest.raises(TagInputError, match="k must be"):
            tagger.predict(ok, k=k)
    assert tagger.unknown_tags(["狗", "独角兽", "独角兽", "飞船"]) == ["独角兽", "飞船"]
    with pytest.raises(UnknownTagError, match="独角兽") as info:
        tagger.predict(ok, user_tags=[["狗", "独角兽"]])
    assert info.value.tags == ["独角兽"]
    with pytest.raises(TagInputError, match="lists for"):
        tagger.predict(ok, user_tags=[[], []])
    assert issubclass(TagInputError, ValueError)


def test_zh_only_mlp_component_uses_static_english(data, tmp_path: Path) -> None:
    manifest, features = data
    cfg = TaggerConfig.from_dict({**TINY, "epochs": 5, "lqp_epochs": 5, "model": "mlp"})
    folder = train_tagger_component(manifest, features, tmp_path / "mlp", cfg, INPUT_FEATURE, 0)
    spec = read_component(folder)
    assert spec["outputs"]["en"] is None and spec["inputs"]["user_tags"] is None
    tagger = Tagger.load(folder, spec, 1)
    tags = tagger.predict(np.stack([features["img000"]]), k=5)[0]
    assert {t.english for t in tags} == {e for _, e in TAGS}
    with pytest.raises(TagInputError, match="without user tags"):
        tagger.predict(np.stack([features["img000"]]), user_tags=[["狗"]])


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="model must be"):
        TaggerConfig.from_dict({"model": "rnn"})
    with pytest.raises(ValueError, match="unknown tagger option"):
        TaggerConfig.from_dict({"epoch": 3})
    assert replace(TaggerConfig(), model="mlp").model == "mlp"


def test_experiment_cli_on_tiny_tuxpaint(tiny_run, tmp_path: Path) -> None:
    from xlsearch_training.tagging.cli import main

    config = {
        "backbone": {"kind": "efficientnet_lite0"},
        "crop": "center",
        "train": {**TINY, "epochs": 5, "lqp_epochs": 5, "vocab": {"zh_min_count": 2}},
        "models": {"MLP (zh only)": {"model": "mlp"}, "Cascading MLP": {"model": "cascade"}},
        "serve": {"model": "cascade", "user_tags": True},
    }
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    runs = tmp_path / "runs"
    bundle = tmp_path / "bundle"
    import shutil

    shutil.copytree(tiny_run.runs / "bundle", bundle)
    argv = ["--data", str(tiny_run.data), "--runs", str(runs), "--features-from", str(tiny_run.runs)]
    argv += [
        "--seeds",
        "0,1",
        "--config",
        str(tmp_path / "config.json"),
        "--no-progress",
        "--bundle",
        str(bundle),
    ]
    assert main(argv) == 0
    table = (runs / "tagging.md").read_text(encoding="utf-8")
    assert "| Cascading MLP | LQP |" in table and "| MLP (zh only) | oracle k |" in table and "±" in table
    results = json.loads((runs / "results.json").read_text(encoding="utf-8"))
    assert len(results) == 4 and {r["seed"] for r in results} == {0, 1}
    done = runs / "seed1" / "cascading-mlp" / "result.json"
    stamp = done.stat().st_mtime_ns
    assert main(argv[:-2]) == 0  # resumed: nothing retrained
    assert done.stat().st_mtime_ns == stamp
    from xlsearch.bundle.manifest import read_bundle_manifest

    manifest = read_bundle_manifest(bundle)
    assert manifest["tagger"]["model"] == "cascade" and (bundle / "tagger" / "tagger.onnx").is_file()
    spec = read_component(bundle / "tagger")
    tagger = Tagger.load(bundle / "tagger", spec, 1)
    chunks = [np.load(p) for p in sorted((tiny_run.runs / "cache" / "features").rglob("chunk_*.npz"))]
    x = next(c["v_feature"] for c in chunks if c["v_feature"].shape[1] == spec["input_feature"]["dim"])
    assert all(len(tags) >= 1 for tags in tagger.predict(x[:2]))
