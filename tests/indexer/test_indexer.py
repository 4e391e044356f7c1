"""The batch indexer: sources, skipped-image report, resume after an interruption, CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xlsearch.bundle.runtime import Bundle
from xlsearch.data.manifest import Manifest, read_manifest
from xlsearch.encode.preprocess import load_image
from xlsearch.index.image_index import BundleKey, ImageIndex
from xlsearch_indexer.cli import main
from xlsearch_indexer.encoder import BundleEncoder, ImageDecoder
from xlsearch_indexer.job import IndexWriter, checkpoint_for, run_job
from xlsearch_indexer.sources import Source, SourceItem, folder_source, manifest_source, read_captions

N = 8


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path) -> Bundle:
    return Bundle(tiny_bundle)


@pytest.fixture(scope="module")
def manifest(tiny_manifest: Path) -> Manifest:
    return read_manifest(tiny_manifest)


@pytest.fixture
def images_dir(manifest: Manifest, tmp_path: Path) -> Path:
    """N real images in nested folders + a captions CSV (one image has two captions, one none) + a corrupt PNG."""
    root = tmp_path / "imgs"
    rows = ["image,caption"]
    for n, rec in enumerate(manifest.records[:N]):
        rel = f"{'a' if n % 2 else 'b/c'}/{n}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(manifest.image_path(rec), root / rel)
        if n != 3:
            rows.append(f'{rel},"{rec.en[0]}"')
    rows.append('a/1.png,"A second caption."')
    rows.append('missing.png,"Nobody here."')
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n definitely not a PNG")
    (root / ".hidden").mkdir()
    shutil.copy(root / "a/1.png", root / ".hidden/x.png")
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


# -- sources (no bundle) ------------------------------------------------------------------------------------------
def test_folder_source_and_captions_files(tmp_path: Path) -> None:
    for rel in ("x.jpg", "sub/y.png", "sub/z.txt", ".git/w.png"):
        (tmp_path / "f" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "f" / rel, format="PNG")
    (tmp_path / "c.jsonl").write_text(
        '{"image": "x.jpg", "caption": ["One.", "Two."]}\n\n{"image": "./sub/y.png", "caption": "Three."}\n'
        '{"image": "gone.png", "caption": "Four."}\n',
        encoding="utf-8",
    )
    src = folder_source(tmp_path / "f", tmp_path / "c.jsonl")
    assert [(i.id, i.captions) for i in src.items] == [
        ("sub/y.png", ("Three.",)),
        ("x.jpg", ("One.", "Two.")),
    ]
    assert src.warnings == ["captions file names an image that is not in the folder: gone.png"]
    (tmp_path / "bad.csv").write_text("file,text\nx.jpg,hi\n", encoding="utf-8")
    with pytest.raises(ValueError, match="header"):
        read_captions(tmp_path / "bad.csv")
    (tmp_path / "bad.jsonl").write_text("{nope\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_captions(tmp_path / "bad.jsonl")


def test_manifest_source(manifest: Manifest) -> None:
    src = manifest_source(manifest.path, ["test"])
    assert len(src.items) == len(manifest.split("test"))
    rec = manifest.split("test")[0]
    item = src.items[0]
    assert (item.id, item.captions, item.tags) == (rec.id, tuple(rec.en), tuple(rec.tags_zh))
    assert item.path == manifest.image_path(rec) and item.path.is_file()


# -- the job --------------------------------------------------------------------------------------------------------
def test_cli_indexes_folder_and_reports_skipped(
    bundle: Bundle, images_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sizes = sorted((p.stat().st_size, p) for p in images_dir.rglob("*.png") if p.name != "broken.png")
    limit = sizes[-1][0] - 1  # the largest real image is "oversized"
    out = tmp_path / "index"
    argv = [
        "--images",
        str(images_dir),
        "--captions",
        str(tmp_path / "captions.csv"),
        "--bundle",
        str(bundle.folder),
    ]
    argv += ["--out", str(out), "--max-image-bytes", str(limit), "--batch-size", "3", "--workers", "2"]
    argv += ["--threads", "1", "--factory", "HNSW32", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "images/s" in printed.out and "encode_images" in printed.out and "skipped" in printed.err
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    reasons = {s["id"]: s["reason"] for s in report["skipped"]}
    oversized = sizes[-1][1].relative_to(images_dir).as_posix()
    assert set(reasons) == {"broken.png", oversized}
    assert "cannot decode" in reasons["broken.png"] and "max-image-bytes" in reasons[oversized]
    assert (report["total"], report["indexed"], report["n_skipped"]) == (N + 1, N - 1, 2)
    assert report["warnings"] == ["captions file names an image that is not in the folder: missing.png"]
    index = ImageIndex.load(out, bundle)
    assert index.count == N - 1 and index.factory == "HNSW32" and index.report == report
    assert index.int_id(".hidden/x.png") is None and index.int_id("broken.png") is None
    if oversized != "a/1.png":  # two CSV rows -> two captions, in order
        assert index.metadata([index.int_id("a/1.png")])[0].captions[1] == "A second caption."
    if oversized != "a/3.png":  # no CSV row -> indexed without a caption
        assert not index.metadata([index.int_id("a/3.png")])[0].has_caption
    assert not list(tmp_path.glob(".index.work-*"))  # checkpoint removed after success


class FailingEncoder(BundleEncoder):
    """Fails on the n-th image batch (an interrupted run); counts the images it encoded."""

    def __init__(self, bundle: Bundle, fail_on: int | None = None):
        super().__init__(bundle)
        self.fail_on, self.calls, self.images = fail_on, 0, 0

    def encode_images_and_tags(self, pixels: np.ndarray):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("injected failure")
        self.images += len(pixels)
        return super().encode_images_and_tags(pixels)


def _run(bundle: Bundle, source: Source, out: Path, encoder: BundleEncoder):
    return run_job(
        source,
        ImageDecoder(bundle.preprocess_config, 1 << 30),
        encoder,
        checkpoint_for(out, BundleKey.of(bundle)),
        IndexWriter(bundle, "IDMap,Flat", out),
        batch_size=2,
        workers=2,
        chunk_size=2,
        progress=False,
    )


def test_interrupted_run_resumes(bundle: Bundle, manifest: Manifest, tmp_path: Path) -> None:
    items = manifest_source(manifest.path).items[:N]
    source = Source(items + [SourceItem("missing", tmp_path / "nope.png", "nope")], "test")
    out = tmp_path / "index"
    first = FailingEncoder(bundle, fail_on=3)
    with pytest.raises(RuntimeError, match="injected"):
        _run(bundle, source, out, first)
    assert not out.exists()
    work = checkpoint_for(out, BundleKey.of(bundle)).folder
    assert len(list(work.glob("chunk_*.npz"))) == 2 and first.images == 4  # two batches survived

    second = FailingEncoder(bundle)
    result = _run(bundle, source, out, second)
    assert second.images == N - 4  # only what was missing
    assert (result.reused, result.computed, result.indexed) == (4, N + 1 - 4, N)
    assert [s["id"] for s in result.skipped] == ["missing"] and not work.exists()

    clean = _run(bundle, source, tmp_path / "clean", FailingEncoder(bundle))
    a, b = ImageIndex.load(out, bundle), ImageIndex.load(clean.out, bundle)
    assert a.count == b.count == N
    for item in items:
        ia, ib = np.array([a.int_id(item.id)]), np.array([b.int_id(item.id)])
        np.testing.assert_allclose(a.image_vectors(ia), b.image_vectors(ib), atol=1e-5)
        np.testing.assert_allclose(a.caption_vectors(ia), b.caption_vectors(ib), atol=1e-5)
        assert a.metadata(ia) == b.metadata(ib)
        # the backbone feature survives the checkpoint too, and is what the bundle gives for the file
        _, feature = bundle.encode_pixels_with_features(
            ImageDecoder(bundle.preprocess_config, 1 << 30)(item)[None]
        )
        np.testing.assert_allclose(a.image_features(ia), feature, atol=2e-3)
        np.testing.assert_allclose(a.image_features(ia), b.image_features(ib), atol=1e-6)


def test_indexer_vectors_equal_bundle_encode_images(bundle: Bundle, manifest: Manifest) -> None:
    """Images indexed in batch and images added to a running server (Bundle.encode_images) are comparable."""
    item = manifest_source(manifest.path).items[0]
    pixels = ImageDecoder(bundle.preprocess_config, 1 << 30)(item)
    ours = BundleEncoder(bundle).encode_images(pixels[None])
    np.testing.assert_allclose(ours, bundle.encode_images([load_image(item.path)]), atol=1e-5)


def test_cli_usage_errors(bundle: Bundle, images_dir: Path, tmp_path: Path) -> None:
    common = ["--bundle", str(bundle.folder), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(["--manifest", "x", "--captions", "c.csv", *common]) == 2
    assert main(["--images", str(images_dir), "--factory", "LSH", *common]) == 2
    assert main(["--images", str(tmp_path / "nowhere"), *common]) == 2
    with pytest.raises(SystemExit):
        main(["--bundle", "b", "--out", "o"])  # no source


def test_serving_modules_do_not_import_torch() -> None:
    code = (
        "import sys, xlsearch.index.image_index, xlsearch.search.engine, xlsearch_indexer.cli, xlsearch_indexer.job;"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
