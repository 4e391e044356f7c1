"""Image feature extraction with an ONNX image encoder and a resumable disk cache (torch-free), on the one image
pipeline (``xlsearch.encode.pipeline``).

Cache layout: ``cache_dir/<key>/chunk_NNNNNN.npz`` (pipeline checkpoints), where ``key`` hashes the ONNX file bytes,
the preprocessing config and the cache format. A row is reused while its image's (id, path, size, mtime) are
unchanged, so an interrupted run resumes, and a changed manifest recomputes only what changed. Unreadable images are
recorded (with the reason) in the cache, in the returned report and in ``cache_dir/report.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort

from xlsearch.common.atomic import write_text_atomic
from xlsearch.common.progress import progress as progress_bar
from xlsearch.common.timing import StageTimer
from xlsearch.data.manifest import Manifest, read_manifest
from xlsearch.encode.crops import crop_mean, flat_crops, l2_normalize
from xlsearch.encode.decode import decode_pixels
from xlsearch.encode.onnx import make_session
from xlsearch.encode.pipeline import Checkpoint, Row, fingerprint, run_resumable
from xlsearch.encode.preprocess import ImageError, PreprocessConfig

__all__ = ["cache_key", "extract_features"]

CACHE_FORMAT = 2  # 2: rows keyed by (id, fingerprint) in pipeline checkpoints
UNIT_NORM_TOL = 1e-3


class _Item(NamedTuple):
    id: str
    image: str  # as the manifest names it
    path: Path
    fingerprint: str


def cache_key(onnx_path: str | os.PathLike[str], cfg: PreprocessConfig) -> str:
    """Hash of the ONNX file bytes + preprocessing config + cache format."""
    h = hashlib.sha256(f"xlsearch-features-v{CACHE_FORMAT}\n".encode())
    with open(onnx_path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    h.update(json.dumps(cfg.to_dict(), sort_keys=True).encode())
    return h.hexdigest()[:20]


def extract_features(
    manifest: Manifest | str | os.PathLike[str],
    onnx_path: str | os.PathLike[str],
    cfg: PreprocessConfig,
    cache_dir: str | os.PathLike[str],
    batch_size: int = 32,
    workers: int = 2,
    chunk_size: int = 512,
    run_batch: int = 8,
    intra_op_threads: int | None = None,
    renormalize: bool | None = None,
    progress: bool = True,
) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """Encode every manifest image -> (ids, features [N,D] float32, report).

    Images are decoded by ``workers`` threads, ``batch_size`` at a time, while ONNX Runtime encodes the previous
    batch in runs of at most ``run_batch`` crops (small runs are faster on CPU: fewer cache misses). With
    ``cfg.crop == "oversample"`` the 10 crops are encoded and averaged; the mean is L2-normalised again when
    ``renormalize`` is True, or, by default (None), when the encoder's outputs are unit vectors. Unreadable images
    are left out of ``ids`` and listed in ``report["skipped"]`` as {"id", "image", "reason"}.
    """
    if min(batch_size, workers, chunk_size, run_batch) < 1:
        raise ValueError("batch_size, workers, chunk_size and run_batch must be >= 1")
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest, check_images=False)
    items = []
    for rec in manifest.records:
        path = manifest.image_path(rec)
        items.append(_Item(rec.id, rec.image, path, fingerprint(rec.id, rec.image, path=path)))
    key = cache_key(onnx_path, cfg)
    session = make_session(onnx_path, intra_op_threads, spinning=False)  # decode threads need the cores
    input_name = _check_input(session, cfg)
    dim = _output_dim(session, input_name, cfg)
    checkpoint: Checkpoint[_Item] = Checkpoint(Path(cache_dir) / key, {"feature": dim})

    def encode(batch: list[_Item], pixels: np.ndarray) -> list[Row]:
        return [Row({"feature": v}) for v in _run_backbone(session, input_name, pixels, run_batch)]

    t0, timer = time.perf_counter(), StageTimer()
    with progress_bar(total=len(items), unit="img", desc="image features", disable=not progress) as bar:
        done = run_resumable(
            items,
            lambda it: (it.id, it.fingerprint),
            lambda it: decode_pixels(
                it.path, cfg
            ),  # the serving decode path: offline and served features agree
            encode,
            checkpoint,
            batch_size=batch_size,
            workers=workers,
            chunk_size=chunk_size,
            skip=(ImageError,),
            timer=timer,
            on_progress=bar.update,
        )
    seconds = time.perf_counter() - t0
    ids = [it.id for it, row in zip(items, done.rows, strict=True) if not row.skipped]
    skipped = [
        {"id": it.id, "image": it.image, "reason": row.reason}
        for it, row in zip(items, done.rows, strict=True)
        if row.skipped
    ]
    kept = [row.vectors["feature"] for row in done.rows if not row.skipped]
    feats = np.stack(kept).astype(np.float32) if kept else np.zeros((0, dim), np.float32)
    if cfg.crop == "oversample":
        if renormalize is None:
            renormalize = _outputs_unit_norm(session, input_name, cfg)
        if renormalize:
            feats = l2_normalize(feats)
    report = {
        "total": len(items),
        "extracted": len(ids),
        "n_skipped": len(skipped),
        "skipped": skipped,
        "dim": int(dim),
        "cache_key": key,
        "onnx": str(onnx_path),
        "preprocess": cfg.to_dict(),
        "renormalized": bool(cfg.crop == "oversample" and renormalize),
        "reused": done.reused,
        "computed": done.computed,
        "seconds": round(seconds, 3),
        "images_per_second": round(done.computed / seconds, 2) if done.computed and seconds > 0 else None,
    }
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(cache_dir) / "report.json", json.dumps(report, indent=1, ensure_ascii=False))
    return ids, feats.astype(np.float32, copy=False), report


def _run_backbone(
    session: ort.InferenceSession, input_name: str, x: np.ndarray, run_batch: int
) -> np.ndarray:
    """[B,3,S,S] -> [B,D]; [B,10,3,S,S] -> mean over the 10 crops [B,D] (not re-normalised: that is decided for the
    whole set). At most ``run_batch`` crops per run."""
    flat = flat_crops(x)
    out = np.concatenate(
        [session.run(None, {input_name: flat[i : i + run_batch]})[0] for i in range(0, len(flat), run_batch)]
    )
    return crop_mean(out, len(x), renormalize=False) if x.ndim == 5 else out


def _check_input(session: ort.InferenceSession, cfg: PreprocessConfig) -> str:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ValueError(f"image encoder must have one input, got {[i.name for i in inputs]}")
    shape = inputs[0].shape
    size = cfg.image_size
    if len(shape) != 4 or any(
        isinstance(d, int) and d != want for d, want in zip(shape[1:], (3, size, size), strict=False)
    ):
        raise ValueError(
            f"image encoder input {inputs[0].name} has shape {shape}; preprocessing makes [B,3,{size},{size}]"
        )
    return inputs[0].name


def _probe(session: ort.InferenceSession, input_name: str, cfg: PreprocessConfig) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((1, 3, cfg.image_size, cfg.image_size)).astype(np.float32)
    return session.run(None, {input_name: x})[0]


def _output_dim(session: ort.InferenceSession, input_name: str, cfg: PreprocessConfig) -> int:
    d = session.get_outputs()[0].shape[-1]
    return d if isinstance(d, int) else int(_probe(session, input_name, cfg).shape[-1])


def _outputs_unit_norm(session: ort.InferenceSession, input_name: str, cfg: PreprocessConfig) -> bool:
    """Does the encoder L2-normalise? (probe with one random image)"""
    return abs(float(np.linalg.norm(_probe(session, input_name, cfg))) - 1.0) < UNIT_NORM_TOL
