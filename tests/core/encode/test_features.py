"""Feature extraction: ONNX batches, oversampling, resumable chunk cache, unreadable images reported."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

import xlsearch.encode.features as features  # noqa: E402
from xlsearch.data.manifest import read_manifest  # noqa: E402
from xlsearch.encode.features import cache_key, extract_features  # noqa: E402
from xlsearch.encode.preprocess import PreprocessConfig, load_image, preprocess  # noqa: E402

CFG = PreprocessConfig(image_size=32, resize_size=40)


def tiny_encoder(path: Path, normalize: bool = False, size: int | str = "S") -> Path:
    """pixels [B,3,S,S] -> embedding [B,3] = per-channel mean (optionally L2-normalised)."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["pixels"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
    ]
    nodes.append(
        helper.make_node("LpNormalization", ["flat"], ["embedding"], axis=1, p=2)
        if normalize
        else helper.make_node("Identity", ["flat"], ["embedding"])
    )
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """9 images (varied sizes/colours) + one corrupt file + one missing file, as a manifest folder."""
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for n in range(11):
        name = f"images/{n:02d}.png"
        if n == 4:
            (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n not really")
        elif n != 7:  # 07 is missing
            w, h = 30 + 13 * n, 70 - 3 * n
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
        lines.append(
            {
                "id": f"img{n:02d}",
                "image": name,
                "split": "train",
                "en": [],
                "zh": [],
                "tags_en": [],
                "tags_zh": [],
            }
        )
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return folder


def expected_features(folder: Path, ids: list[str], cfg: PreprocessConfig) -> np.ndarray:
    out = []
    for i in ids:
        x = preprocess(load_image(folder / f"images/{i[3:]}.png"), cfg)
        out.append(x.mean(axis=(-1, -2)).reshape(-1, 3).mean(axis=0))
    return np.stack(out)


def test_extract_reports_unreadable_images(dataset: Path, tmp_path: Path) -> None:
    enc = tiny_encoder(tmp_path / "enc.onnx")
    ids, feats, report = extract_features(
        dataset, enc, CFG, tmp_path / "cache", batch_size=2, chunk_size=3, progress=False
    )
    assert ids == [f"img{n:02d}" for n in range(11) if n not in (4, 7)]
    assert feats.dtype == np.float32 and feats.shape == (9, 3)
    np.testing.assert_allclose(feats, expected_features(dataset, ids, CFG), atol=1e-5)
    assert report["total"] == 11 and report["extracted"] == 9 and report["n_skipped"] == 2
    reasons = {s["id"]: s for s in report["skipped"]}
    assert set(reasons) == {"img04", "img07"} and reasons["img04"]["image"] == "images/04.png"
    assert "cannot decode" in reasons["img04"]["reason"] and "07.png" in reasons["img07"]["reason"]
    on_disk = json.loads((tmp_path / "cache" / "report.json").read_text())
    assert on_disk["skipped"] == report["skipped"] and on_disk["cache_key"] == cache_key(enc, CFG)


def test_interrupted_run_resumes(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    enc = tiny_encoder(tmp_path / "enc.onnx")
    manifest = read_manifest(dataset, check_images=False)
    kwargs = {"batch_size": 2, "chunk_size": 3, "progress": False}
    fresh = extract_features(manifest, enc, CFG, tmp_path / "fresh", **kwargs)

    real, calls = features._run_backbone, []

    def flaky(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while encoding the third batch: one chunk (3 rows) was flushed
        return real(*args, **kw)

    monkeypatch.setattr(features, "_run_backbone", flaky)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        extract_features(manifest, enc, CFG, cache, **kwargs)
    assert len(list((cache / cache_key(enc, CFG)).glob("chunk_*.npz"))) == 1
    assert not list((cache / cache_key(enc, CFG)).glob(".chunk*"))  # no temp file left behind

    calls.clear()
    monkeypatch.setattr(features, "_run_backbone", lambda *a, **k: calls.append(1) or real(*a, **k))
    ids, feats, report = extract_features(manifest, enc, CFG, cache, **kwargs)
    assert (report["reused"], report["computed"]) == (3, 8)  # only what the interrupted run had not flushed
    assert ids == fresh[0] and np.array_equal(feats, fresh[1]) and report["skipped"] == fresh[2]["skipped"]

    calls.clear()  # a complete cache encodes nothing
    again = extract_features(manifest, enc, CFG, cache, **kwargs)
    assert calls == [] and again[2]["reused"] == 11 and np.array_equal(again[1], fresh[1])


def test_oversample_averages_ten_crops(dataset: Path, tmp_path: Path) -> None:
    cfg = replace(CFG, crop="oversample")
    raw = tiny_encoder(tmp_path / "raw.onnx")
    ids, feats, report = extract_features(dataset, raw, cfg, tmp_path / "c1", batch_size=4, progress=False)
    np.testing.assert_allclose(feats, expected_features(dataset, ids, cfg), atol=1e-5)
    assert report["renormalized"] is False
    unit = tiny_encoder(tmp_path / "unit.onnx", normalize=True)
    ids2, feats2, report2 = extract_features(
        dataset, unit, cfg, tmp_path / "c2", batch_size=4, progress=False
    )
    assert ids2 == ids and report2["renormalized"] is True
    np.testing.assert_allclose(np.linalg.norm(feats2, axis=1), 1.0, atol=1e-5)


def test_cache_key_and_changed_manifest(dataset: Path, tmp_path: Path) -> None:
    enc = tiny_encoder(tmp_path / "enc.onnx")
    other = tiny_encoder(tmp_path / "unit.onnx", normalize=True)
    assert cache_key(enc, CFG) != cache_key(enc, replace(CFG, interpolation="bilinear"))
    assert cache_key(enc, CFG) != cache_key(other, CFG)
    cache = tmp_path / "cache"
    extract_features(dataset, enc, CFG, cache, chunk_size=4, progress=False)
    # Drop the first record and change an image: rows are keyed by (id, file), so nothing is misread and only the
    # changed image is encoded again.
    lines = (dataset / "manifest.jsonl").read_text().splitlines(keepends=True)
    (dataset / "manifest.jsonl").write_text("".join(lines[1:]))
    changed = dataset / "images" / "02.png"
    Image.open(changed).transpose(Image.Transpose.FLIP_LEFT_RIGHT).rotate(90).save(changed)
    ids, feats, report = extract_features(dataset, enc, CFG, cache, chunk_size=4, progress=False)
    assert (report["reused"], report["computed"]) == (9, 1) and ids[0] == "img01"
    np.testing.assert_allclose(feats, expected_features(dataset, ids, CFG), atol=1e-5)


def test_input_size_mismatch_is_an_error(dataset: Path, tmp_path: Path) -> None:
    enc = tiny_encoder(tmp_path / "fixed.onnx", size=64)
    with pytest.raises(ValueError, match="preprocessing makes"):
        extract_features(dataset, enc, CFG, tmp_path / "cache", progress=False)
