"""``xlsearch-train-srnn`` end to end, one epoch per stage, on a tiny synthetic image set: the tagging rows (the
Cascading MLP baseline, S-CNN-RNN, a multi-scale tagger) and the captioning rows, their tables, the resume, and the
row chosen on validation attached to a bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("torch")

from xlsearch.bundle.manifest import read_bundle_manifest  # noqa: E402
from xlsearch.bundle.runtime import Bundle  # noqa: E402
from xlsearch.data.manifest import Record, write_manifest  # noqa: E402
from xlsearch_training.srnn.cli import main  # noqa: E402

SHAPES = [  # (zh tag, en tag, zh sentence, en sentence, colour)
    ("圆", "circle", "一个红色的圆", "a red circle", (220, 30, 30)),
    ("方块", "square", "一个蓝色的方块", "a blue square", (30, 60, 220)),
    ("星星", "star", "一颗黄色的星星", "a yellow star", (230, 200, 20)),
    ("树", "tree", "一棵绿色的树", "a green tree", (30, 160, 40)),
]
EPOCHS = {"concept_epochs": 1, "rnn_epochs": 1, "joint_epochs": 1}
CONFIG = {
    "backbone": {"kind": "efficientnet_lite0"},
    "tagging": {
        "train": {"hidden": 16, "lstm": 16, "word_dim": 8, **EPOCHS},
        "baseline": {"Cascade": {"model": "cascade", "hidden": 16, "epochs": 1, "lqp_hidden": [8], "lqp_epochs": 1}},
        "models": {"S-CNN-RNN": {}},
        "multiscale_train": {"hidden": 16, "lqp_hidden": [8], **{f"{s}_epochs": 1 for s in ("cnn", "fusion", "text", "classifier", "lqp")}},
        "multiscale": {"MS-CNN + Tags": {"textual": True}},
    },
    "captioning": {
        "train": {"hidden": 16, "lstm": 16, "word_dim": 8, **EPOCHS},
        "baseline_strategies": [],
        "models": {"S-CNN-RNN": {}, "S-CNN-RNN transfer": {"transfer": True}},
    },
}  # fmt: skip


def _image(path: Path, colour: tuple[int, int, int], n: int) -> None:
    img = Image.new("RGB", (64, 64), (255, 255, 255))
    d = ImageDraw.Draw(img)
    off = n % 7
    d.ellipse((8 + off, 8, 52 + off, 52), fill=colour) if n % 2 else d.rectangle(
        (10, 10 + off, 50, 50), fill=colour
    )
    img.save(path)


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    (root / "images").mkdir()
    records = []
    for n in range(48):
        zh, en, zs, es, colour = SHAPES[n % len(SHAPES)]
        rel = f"images/{n:02d}.png"
        _image(root / rel, colour, n)
        split = "train" if n < 32 else "val" if n < 40 else "test"
        records.append(
            Record(id=f"s{n:02d}", image=rel, split=split, zh=[zs], en=[es], tags_zh=[zh], tags_en=[en])
        )
    write_manifest(root, records)
    return root


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One backbone export and feature cache for both tests."""
    return tmp_path_factory.mktemp("features")


def test_tagging_and_captioning_commands_one_epoch(
    synthetic_set: Path, features: Path, tmp_path: Path
) -> None:
    config = tmp_path / "srnn.json"
    config.write_text(json.dumps(CONFIG), encoding="utf-8")
    runs = tmp_path / "runs"
    base = [
        "--data",
        str(synthetic_set),
        "--runs",
        str(runs),
        "--seeds",
        "0",
        "--config",
        str(config),
        "--no-progress",
    ]
    assert main(["tagging", *base, "--features-from", str(features)]) == 0
    table = (runs / "tagging" / "tagging.md").read_text(encoding="utf-8")
    for row in (
        "| Cascade | no user tags |",
        "| S-CNN-RNN | no user tags |",
        "| MS-CNN + Tags | user tags |",
    ):
        assert row in table
    results = json.loads((runs / "tagging" / "results.json").read_text(encoding="utf-8"))
    assert {r["kind"] for r in results} == {"baseline", "srnn", "multiscale"}
    srnn = next(r for r in results if r["kind"] == "srnn")
    assert set(srnn["training"]) >= {"concepts", "rnn", "joint"} and 0 <= srnn["val_h_f1"] <= 1
    # resume: a row whose result.json holds the same config is not trained again
    path = runs / "tagging" / "seed0" / "s-cnn-rnn" / "result.json"
    stamp = path.stat().st_mtime_ns
    assert main(["tagging", *base, "--features-from", str(features), "--models", "S-CNN-RNN"]) == 0
    assert path.stat().st_mtime_ns == stamp

    retrieval = ["--retrieval-runs", str(features), "--no-baseline"]
    assert main(["captioning", *base, *retrieval]) == 0
    captions = (runs / "captioning" / "captioning.md").read_text(encoding="utf-8")
    assert "| S-CNN-RNN |" in captions and "| S-CNN-RNN transfer |" in captions
    done = json.loads((runs / "captioning" / "results.json").read_text(encoding="utf-8"))
    transfer = next(r for r in done if r["strategy"] == "S-CNN-RNN transfer")
    assert transfer["concepts"]["lang"] == "en" and np.isfinite(transfer["test"]["CIDEr-D"])
    with pytest.raises(SystemExit):
        main(["captioning", *base, *retrieval, "--models", "no such row"])


def test_served_row_is_attached_to_a_bundle(
    synthetic_set: Path, features: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    """--bundle: the tagging row best on validation becomes the bundle's tagger, loadable by the bundle runtime."""
    config = tmp_path / "srnn.json"
    cfg = json.loads(json.dumps(CONFIG))
    cfg["tagging"]["baseline"], cfg["tagging"]["multiscale"] = {}, {}
    config.write_text(json.dumps(cfg), encoding="utf-8")
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    argv = ["tagging", "--data", str(synthetic_set), "--runs", str(tmp_path / "runs"), "--seeds", "0"]
    argv += [
        "--config",
        str(config),
        "--features-from",
        str(features),
        "--no-progress",
        "--bundle",
        str(bundle),
    ]
    assert main(argv) == 0
    spec = read_bundle_manifest(bundle)["tagger"]
    assert (
        spec["format"] == "xlsearch.sequence-tagger/1"
        and spec["metrics"]["selection"]["chosen"] == "S-CNN-RNN"
    )
    tagger = Bundle(bundle).tagger
    width = Bundle(bundle).manifest.image_encoder.component_dim
    assert len(tagger.predict(np.full((2, width), 1 / np.sqrt(width), np.float32))) == 2
    # the captioning row best on validation CIDEr-D becomes the bundle's captioner (an S-CNN-RNN component)
    cap = ["captioning", "--data", str(synthetic_set), "--runs", str(tmp_path / "runs"), "--seeds", "0"]
    cap += ["--config", str(config), "--retrieval-runs", str(features), "--no-baseline", "--no-progress"]
    cap += ["--bundle", str(bundle)]
    assert main(cap) == 0
    spec = read_bundle_manifest(bundle)["captioner"]
    chosen = spec["selection"]["chosen"]
    assert chosen in CONFIG["captioning"]["models"] and spec["model"] == "s-cnn-rnn"
    means = spec["selection"]["means"]
    assert set(means) == set(CONFIG["captioning"]["models"]) and means[chosen] == max(means.values())
    served = Bundle(bundle)
    dim = served.manifest.image_encoder.feature_dim  # the captioner reads the `feature` output
    feats = np.full((2, dim), 1 / np.sqrt(dim), np.float32)
    out = served.captioner.generate(feats, n_best=1, beam_size=3)
    assert len(out) == 2 and all(len(hyps) == 1 for hyps in out)


def test_row_names_with_commas_are_kept_whole() -> None:
    from xlsearch_training.srnn.cli import _split_names

    rows = ["S-CNN-RNN", "NIC-deeply (feature interface, deep supervision)", "NIC-F"]
    assert _split_names("NIC-deeply (feature interface, deep supervision),S-CNN-RNN", rows) == rows[1::-1]
    assert _split_names("NIC-F, S-CNN-RNN", rows) == ["NIC-F", "S-CNN-RNN"]
    assert _split_names("S-CNN-RNN,no such row", rows) == ["S-CNN-RNN", "no such row"]  # reported by _names
