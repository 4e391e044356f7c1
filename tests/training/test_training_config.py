"""The one from_dict policy of the training configs (xlsearch_training.config): every shipped experiment file loads;
an unknown key anywhere (a variant, a nested section) is an error naming the key, the file and where in it; values
are checked against the field types; each experiment command rejects a bad file before doing any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from xlsearch_training.a3vse.config import A3VSEExperiment, A3VSERun, W2VVRun  # noqa: E402
from xlsearch_training.captioning.config import CaptionerConfig  # noqa: E402
from xlsearch_training.config import CONFIG_DIR, ConfigError, from_dict  # noqa: E402
from xlsearch_training.srnn.config import SRNNExperiment  # noqa: E402
from xlsearch_training.tagging.config import TaggerConfig, TaggingExperiment  # noqa: E402
from xlsearch_training.w2vv.config import RetrievalExperiment, TrainConfig  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# every experiment file the package ships, with the loader its command reads it with
LOADERS = {
    "tuxpaint.json": RetrievalExperiment,
    "tagging_tuxpaint.json": TaggingExperiment,
    "captioning_tuxpaint.json": CaptionerConfig,
    "a3vse_tuxpaint.json": A3VSEExperiment,
    "srnn_tuxpaint.json": SRNNExperiment,
}


def _copy(name: str, tmp_path: Path) -> tuple[dict, Path]:
    data = json.loads((CONFIG_DIR / name).read_text(encoding="utf-8"))
    return data, tmp_path / name


def _write(data: dict, path: Path) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def test_every_shipped_config_file_has_a_loader_and_loads() -> None:
    assert sorted(p.name for p in CONFIG_DIR.glob("*.json")) == sorted(LOADERS)
    for name, loader in LOADERS.items():
        assert isinstance(loader.load(CONFIG_DIR / name), loader), name
    tiny = RetrievalExperiment.load(FIXTURES / "tiny_config.json")  # the test suite's retrieval run
    assert tiny.train_config("tiny").image_projection == 64


def test_shipped_variants_build_their_train_configs() -> None:
    retrieval = RetrievalExperiment.load(CONFIG_DIR / "tuxpaint.json")
    cfg = retrieval.train_config("W2VV")
    assert isinstance(cfg, TrainConfig) and cfg.loss == "mse" and not cfg.attention and cfg.epochs == 25
    tagging = TaggingExperiment.load(CONFIG_DIR / "tagging_tuxpaint.json")
    assert tagging.tagger_config("Cascading MLP + English-only stamps").english_only_images
    assert tagging.served_config(progress=True).user_tags and tagging.served_config(progress=True).progress
    a3vse = A3VSEExperiment.load(CONFIG_DIR / "a3vse_tuxpaint.json")
    full = a3vse.variant("A3VSE full (tag concepts + beta 0.95)")
    assert isinstance(full, A3VSERun) and full.train.beta == 0.95 and full.tag_concepts is not None
    assert full.tag_concepts.kind == "tag_regional" and full.tag_concepts.min_concepts == 1
    baseline = a3vse.variant("W2VV e5 sentence branch (annotated only)")
    assert isinstance(baseline, W2VVRun)
    assert baseline.train == retrieval.train_config("e5 sentence branch, joint space (InfoNCE)")


@pytest.mark.parametrize(
    ("name", "section", "variant"),
    [
        ("tuxpaint.json", "variants", "Enhanced W2VV (attention)"),
        ("tagging_tuxpaint.json", "models", "Multi-task MLP"),
        ("a3vse_tuxpaint.json", "variants", "A3VSE w/o cross"),
        ("a3vse_tuxpaint.json", "variants", "Enhanced W2VV (annotated only)"),  # the W2VV family
    ],
)
def test_unknown_key_in_a_variant_names_the_key_the_file_and_the_variant(name, section, variant, tmp_path):
    data, path = _copy(name, tmp_path)
    data[section][variant]["epohcs"] = 3
    with pytest.raises(ConfigError) as info:
        LOADERS[name].load(_write(data, path))
    message = str(info.value)
    assert "'epohcs'" in message and str(path) in message and repr(variant) in message, message


@pytest.mark.parametrize(
    ("name", "edit", "where"),
    [
        ("captioning_tuxpaint.json", lambda d: d.update(beam=4), "captioner option 'beam'"),
        (
            "captioning_tuxpaint.json",
            lambda d: d.update(tagger={"hiden": 3}),
            "tagger: unknown tagger option",
        ),
        ("tuxpaint.json", lambda d: d["train"].update(gru_size=1), "train: unknown W2VV train option"),
        ("tuxpaint.json", lambda d: d["backbone"].update(weights="x"), "backbone: unknown backbone option"),
        (
            "tagging_tuxpaint.json",
            lambda d: d["train"]["vocab"].update(zh_min=1),
            "train: vocab: unknown tag vocab option 'zh_min'",
        ),
        ("tagging_tuxpaint.json", lambda d: d["serve"].update(cascade=1), "serve: unknown tagger option"),
        ("a3vse_tuxpaint.json", lambda d: d["pool"].update(limit=3), "pool: unknown pool option"),
        (
            "a3vse_tuxpaint.json",
            lambda d: d["semantics"].update(top_k=3),
            "semantics: unknown semantics option",
        ),
        (
            "a3vse_tuxpaint.json",
            lambda d: d["tag_semantics"]["tagger"]["vocab"].update(en_top=3),
            "tag_semantics: tagger: vocab: unknown tag vocab option",
        ),
        (
            "a3vse_tuxpaint.json",
            lambda d: d["variants"]["A3VSE full (tag concepts)"].update(tag_semantics={"grid": 2}),
            "variants['A3VSE full (tag concepts)']: tag_semantics: unknown tag concept option 'grid'",
        ),
        ("a3vse_tuxpaint.json", lambda d: d.update(seeds=[0]), "A3VSE experiment option 'seeds'"),
    ],
)
def test_unknown_key_in_a_section_names_where_in_the_file(name, edit, where, tmp_path):
    data, path = _copy(name, tmp_path)
    edit(data)
    with pytest.raises(ConfigError) as info:
        LOADERS[name].load(_write(data, path))
    assert str(path) in str(info.value) and where in str(info.value), str(info.value)


def test_values_are_checked_against_the_field_types(tmp_path):
    data, path = _copy("tuxpaint.json", tmp_path)
    data["variants"]["W2VV"]["epochs"] = "25"
    with pytest.raises(ConfigError, match=r"variants\['W2VV'\]: epochs must be an integer, got string '25'"):
        RetrievalExperiment.load(_write(data, path))
    data["variants"]["W2VV"]["epochs"] = 25
    data["variants"]["W2VV"]["attention"] = 0  # booleans are true/false, not numbers
    with pytest.raises(ConfigError, match="attention must be true or false"):
        RetrievalExperiment.load(_write(data, path))
    data["variants"]["W2VV"]["attention"] = False
    data["variants"]["W2VV"]["mlp_hidden"] = [512, "256"]
    with pytest.raises(ConfigError, match=r"mlp_hidden\[1\] must be an integer"):
        RetrievalExperiment.load(_write(data, path))
    # integers are numbers: a float field stores them as floats; the dataclass's own checks name the variant too
    cfg = from_dict(TrainConfig, {"margin": 1, "mlp_hidden": (8,)}, "test")
    assert cfg.margin == 1.0 and isinstance(cfg.margin, float) and cfg.mlp_hidden == [8]
    with pytest.raises(ConfigError, match=r"x.json: variants\['v'\]: loss must be one of"):
        from_dict(TrainConfig, {"loss": "hinge"}, "x.json: variants['v']")
    with pytest.raises(ConfigError, match="input_scale must be a number or null"):
        TaggerConfig.from_dict({"input_scale": "big"})
    assert TaggerConfig.from_dict({"input_scale": None}).input_scale is None
    with pytest.raises(ConfigError, match="expected a JSON object"):
        CaptionerConfig.load(_write([1, 2], tmp_path / "list.json"))  # type: ignore[arg-type]


def test_a3vse_plan_and_baseline_references_are_checked(tmp_path):
    data, path = _copy("a3vse_tuxpaint.json", tmp_path)
    data["fractions"]["0.5"].append("A3VSE ful")
    with pytest.raises(ConfigError, match=r"fractions\['0.5'\]: unknown variant 'A3VSE ful'"):
        A3VSEExperiment.load(_write(data, path))
    data, path = _copy("a3vse_tuxpaint.json", tmp_path)
    data["variants"]["Enhanced W2VV (annotated only)"]["w2vv_variant"] = "W3VV"
    with pytest.raises(ConfigError, match="tuxpaint.json has no variant 'W3VV'"):
        A3VSEExperiment.load(_write(data, path))


def _cli_mains():
    from xlsearch_training.a3vse.cli import main as a3vse_main
    from xlsearch_training.captioning.cli import main as captioning_main
    from xlsearch_training.srnn.cli import main as srnn_main
    from xlsearch_training.tagging.cli import main as tagging_main
    from xlsearch_training.w2vv.pipeline import main as pipeline_main

    return {
        "tuxpaint.json": pipeline_main,
        "tagging_tuxpaint.json": tagging_main,
        "captioning_tuxpaint.json": captioning_main,
        "a3vse_tuxpaint.json": a3vse_main,
        "srnn_tuxpaint.json": lambda argv: srnn_main(["tagging", *argv]),
    }


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_experiment_commands_reject_a_bad_config_before_any_work(name, tmp_path):
    data, path = _copy(name, tmp_path)
    data["typo_key"] = 1
    missing = tmp_path / "no-dataset"  # would be built (slowly) from Tux Paint if the command got that far
    argv = ["--config", str(_write(data, path)), "--data", str(missing), "--runs", str(tmp_path / "runs")]
    import torch

    threads = torch.get_num_threads()  # the commands set --threads before they read the config
    try:
        with pytest.raises(ConfigError, match=r"unknown .* option 'typo_key'"):
            _cli_mains()[name](argv)
    finally:
        torch.set_num_threads(threads)
    assert not missing.exists() and not (tmp_path / "runs").exists()
