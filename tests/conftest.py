"""Shared pytest fixtures."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"
TUXPAINT_STAMPS = Path("/usr/share/tuxpaint/stamps")


@pytest.fixture
def cococn_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(COCO-CN folder, COCO root) copied from tests/fixtures/cococn, with a tiny JPEG per listed image."""
    root = tmp_path / "src"
    shutil.copytree(FIXTURES / "cococn", root)
    cococn, coco = root / "coco-cn", root / "coco"
    for split_list in sorted(cococn.glob("coco-cn_*.txt")):
        for n, image_id in enumerate(split_list.read_text(encoding="utf-8").split()):
            path = coco / image_id.split("_")[1] / f"{image_id}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 6), (40 * n % 256, 90, 160)).save(path, quality=90)
    return cococn, coco


@dataclass
class TuxSubset:
    root: Path
    png: list[str]  # stamp ids with a PNG and a zh_CN line
    svg_only: list[str]  # ... with only an SVG
    no_zh: list[str]  # a stamp without zh_CN (must be excluded)
    broken: list[str]  # real description, unreadable PNG (must be skipped and reported)
    orphan: list[str]  # an image without description


def _has_zh(txt: Path) -> bool:
    return any(line.startswith("zh_CN.utf8=") for line in txt.read_text(encoding="utf-8").splitlines())


@pytest.fixture(scope="session")
def tuxpaint_subset(tmp_path_factory: pytest.TempPathFactory) -> TuxSubset:
    """A temp stamps root holding ~10 REAL stamps copied from the installed tuxpaint-stamps-default package, plus a
    broken one and an orphan image. Skips when the package is not installed."""
    if not TUXPAINT_STAMPS.is_dir():
        pytest.skip("tuxpaint-stamps-default is not installed (/usr/share/tuxpaint/stamps)")
    png, svg_only, no_zh = [], [], []
    for txt in sorted(TUXPAINT_STAMPS.rglob("*.txt")):
        base = txt.with_suffix("")
        has_png, has_svg = base.with_suffix(".png").is_file(), base.with_suffix(".svg").is_file()
        if not _has_zh(txt):
            if has_png and len(no_zh) < 1:
                no_zh.append(base)
        elif has_png and len(png) < 7:
            png.append(base)
        elif has_svg and not has_png and len(svg_only) < 2:
            svg_only.append(base)
    if len(svg_only) < 1:
        pytest.skip("no SVG-only stamp with a zh_CN description in the installed package")
    root = tmp_path_factory.mktemp("stamps")
    for base in png + svg_only + no_zh:
        rel = base.relative_to(TUXPAINT_STAMPS)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        for ext in (".txt", ".png", ".svg"):
            if base.with_suffix(ext).is_file():
                shutil.copy(base.with_suffix(ext), root / rel.with_suffix(ext))
    # A real description beside an unreadable PNG (must be skipped and reported), and an image with no description.
    (root / "broken").mkdir()
    shutil.copy(png[0].with_suffix(".txt"), root / "broken/stamp.txt")
    (root / "broken/stamp.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
    shutil.copy(png[0].with_suffix(".png"), root / "broken/orphan.png")

    def ids(bases: list[Path]) -> list[str]:
        return [b.relative_to(TUXPAINT_STAMPS).as_posix() for b in bases]

    return TuxSubset(root, ids(png), ids(svg_only), ids(no_zh), ["broken/stamp"], ["broken/orphan"])


# -- a small, real trained bundle shared by the serving tests ---------------------------------------------------
TINY_STAMPS = 160  # enough for a test split of ~24 queries and for fusion depth to matter


@dataclass
class TinyRun:
    data: Path  # Tux Paint manifest folder (TINY_STAMPS stamps, seed-0 splits)
    runs: Path  # pipeline output; the served bundle is runs / "bundle"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """The real pipeline (Tux Paint subset -> EfficientNet-Lite0 features -> tiny Enhanced W2VV + e5 -> bundle),
    run once per session with a tiny config (tests/fixtures/tiny_config.json)."""
    if not TUXPAINT_STAMPS.is_dir():
        pytest.skip("tuxpaint-stamps-default is not installed (/usr/share/tuxpaint/stamps)")
    pytest.importorskip("torch")
    from xlsearch.data.datasets.tuxpaint import convert_tuxpaint
    from xlsearch_training.w2vv.pipeline import main as pipeline_main

    root = tmp_path_factory.mktemp("tiny")
    data, runs = root / "data", root / "runs"
    convert_tuxpaint(data, seed=0, limit=TINY_STAMPS, progress=False)
    argv = [
        "--data",
        str(data),
        "--runs",
        str(runs),
        "--seeds",
        "0",
        "--config",
        str(FIXTURES / "tiny_config.json"),
    ]
    assert pipeline_main(argv) == 0
    return TinyRun(data, runs)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run: TinyRun) -> Path:
    return tiny_run.runs / "bundle"


@pytest.fixture(scope="session")
def tiny_manifest(tiny_run: TinyRun) -> Path:
    return tiny_run.data


@pytest.fixture(scope="session")
def tiny_index(tiny_run: TinyRun, tiny_bundle: Path) -> Path:
    """An exact index of every tiny-manifest image, built by the real indexer CLI (tests copy it before writing)."""
    from xlsearch_indexer.cli import main as index_main

    out = tiny_run.runs / "index"
    if not (out / "manifest.json").exists():
        argv = [
            "--manifest",
            str(tiny_run.data),
            "--bundle",
            str(tiny_bundle),
            "--out",
            str(out),
            "--no-progress",
        ]
        assert index_main(argv) == 0
    return out


# -- the tiny bundle with a trained tagger and captioner attached (Tag / Caption tests) ----------------------------
@dataclass
class TinyFeatures:
    by_id: dict  # image id -> L2-normalised backbone feature (what the bundle's `feature` output gives)
    input_feature: dict  # the component spec's "input_feature"


@pytest.fixture(scope="session")
def tiny_features(tiny_run: TinyRun) -> TinyFeatures:
    import json

    from xlsearch.data.manifest import read_manifest
    from xlsearch.encode.features import extract_features
    from xlsearch.encode.preprocess import PreprocessConfig

    (spec_path,) = sorted((tiny_run.runs / "image_encoder").glob("*/spec.json"))
    spec = json.loads(spec_path.read_text())
    ids, feats, _ = extract_features(
        read_manifest(tiny_run.data),
        spec_path.parent / "image_encoder.onnx",
        PreprocessConfig.from_dict(spec["preprocess"]),
        tiny_run.runs / "cache" / "features",
        progress=False,
    )
    feature = {"dim": spec["dim"], "backbone": spec["backbone"], "preprocess": spec["preprocess"]}
    return TinyFeatures(dict(zip(ids, feats, strict=True)), feature)


@pytest.fixture(scope="session")
def tiny_annotated_bundle(tiny_run: TinyRun, tiny_bundle: Path, tiny_features: TinyFeatures) -> Path:
    """A copy of the tiny bundle with a tiny Cascading-MLP tagger (+ LQP) and a tiny Show-and-Tell captioner,
    trained on the tiny manifest by the real trainers and attached with `attach_component`."""
    from xlsearch.bundle.components import attach_component
    from xlsearch.bundle.runtime import Bundle
    from xlsearch.data.manifest import read_manifest
    from xlsearch_training.captioning.component import train_captioner_component
    from xlsearch_training.captioning.config import CaptionerConfig
    from xlsearch_training.tagging.component import train_tagger_component
    from xlsearch_training.tagging.config import TaggerConfig

    out = tiny_run.runs / "annotated_bundle"
    if (out / "manifest.json").exists():
        return out
    manifest = read_manifest(tiny_run.data)
    work = tiny_run.runs / "components"
    tagger = train_tagger_component(
        manifest,
        tiny_features.by_id,
        work / "tagger",
        TaggerConfig(model="cascade", hidden=64, epochs=15, lqp_hidden=[32], lqp_epochs=20, user_tags=True),
        tiny_features.input_feature,
        seed=0,
    )
    captioner = train_captioner_component(
        manifest,
        tiny_features.by_id,
        work / "captioner",
        CaptionerConfig(word_dim=32, hidden=64, epochs=3, min_count=1),
        tiny_features.input_feature,
        seed=0,
        bundle=Bundle(tiny_bundle),
    )
    staging = tiny_run.runs / "annotated_bundle.tmp"
    shutil.copytree(tiny_bundle, staging)
    attach_component(staging, tagger)
    attach_component(staging, captioner)
    staging.rename(out)
    return out


@pytest.fixture(scope="session")
def tiny_annotated_index(tiny_run: TinyRun, tiny_annotated_bundle: Path) -> Path:
    """The tiny manifest indexed with the annotated bundle (predicted tags stored in the metadata)."""
    from xlsearch_indexer.cli import main as index_main

    out = tiny_run.runs / "annotated_index"
    if not (out / "manifest.json").exists():
        argv = ["--manifest", str(tiny_run.data), "--bundle", str(tiny_annotated_bundle), "--out", str(out)]
        # the tiny tagger is unsure of everything: keep all its top-m^ tags so the tag tests have some to filter on
        assert index_main([*argv, "--min-tag-score", "0", "--no-progress"]) == 0
    return out
