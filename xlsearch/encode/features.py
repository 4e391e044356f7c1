"""Image feature extraction with an ONNX image encoder and a resumable disk cache (torch-free).

Cache layout: `cache_dir/<key>/chunk_<index>_<ids-hash>.npz`, where `key` hashes the ONNX file bytes and the
preprocessing config. Each chunk covers `chunk_size` consecutive manifest records and is written atomically, so an
interrupted run resumes at the first missing chunk. Unreadable images are recorded (with the reason) in their chunk,
in the returned report and in `cache_dir/report.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from xlsearch.common.atomic import save_npz_atomic
from xlsearch.data.manifest import Manifest, read_manifest
from xlsearch.encode.decode import decode_pixels
from xlsearch.encode.onnx import make_session
from xlsearch.encode.preprocess import ImageError, PreprocessConfig

__all__ = ["cache_key", "extract_features"]

CACHE_FORMAT = 1
UNIT_NORM_TOL = 1e-3


@dataclass
class _Chunk:
    ids: list[str]  # ids whose features were extracted, in manifest order
    features: np.ndarray  # [len(ids), D] float32 (oversample: mean of the crops, not re-normalised)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"id", "image", "reason"}


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

    Images are decoded by `workers` threads, `batch_size` at a time, while ONNX Runtime encodes the previous batch
    in runs of at most `run_batch` crops (small runs are faster on CPU: fewer cache misses). With `cfg.crop ==
    "oversample"` the 10 crops are encoded and averaged; the mean is L2-normalised again when `renormalize` is True,
    or, by default (None), when the encoder's outputs are unit vectors. Unreadable images are left out of `ids` and
    listed in `report["skipped"]` as {"id", "image", "reason"}.
    """
    if min(batch_size, workers, chunk_size, run_batch) < 1:
        raise ValueError("batch_size, workers, chunk_size and run_batch must be >= 1")
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest, check_images=False)
    items = [(rec.id, rec.image, manifest.image_path(rec)) for rec in manifest.records]
    key = cache_key(onnx_path, cfg)
    folder = Path(cache_dir) / key
    folder.mkdir(parents=True, exist_ok=True)
    spans = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)]
    paths = [folder / f"chunk_{n:06d}_{_ids_hash(span)}.npz" for n, span in enumerate(spans)]
    chunks: list[_Chunk | None] = [_load_chunk(p, span) for p, span in zip(paths, spans, strict=True)]
    reused = sum(c is not None for c in chunks)
    cached = sum(len(span) for span, c in zip(spans, chunks, strict=True) if c is not None)

    session = make_session(onnx_path, intra_op_threads, spinning=False)  # decode threads need the cores
    input_name = _check_input(session, cfg)
    computed, t0 = 0, time.perf_counter()
    # `initial` counts cached images without inflating the images/s rate
    bar = tqdm(total=len(items), initial=cached, unit="img", desc="image features", disable=not progress)
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
            for n, span in enumerate(spans):
                if chunks[n] is None:
                    chunk = _encode_chunk(
                        session, input_name, span, cfg, batch_size, run_batch, pool, bar.update
                    )
                    _save_chunk(paths[n], chunk)
                    chunks[n] = chunk
                    computed += len(span)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0

    done = [c for c in chunks if c is not None]
    ids = [i for c in done for i in c.ids]
    skipped = [s for c in done for s in c.skipped]
    nonempty = [c.features for c in done if c.features.size]
    dim = nonempty[0].shape[1] if nonempty else _output_dim(session)
    feats = np.concatenate(nonempty) if nonempty else np.zeros((0, dim), np.float32)
    if cfg.crop == "oversample":
        if renormalize is None:
            renormalize = _outputs_unit_norm(session, input_name, cfg)
        if renormalize:
            feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
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
        "chunks": len(spans),
        "chunks_reused": reused,
        "seconds": round(seconds, 3),
        "images_per_second": round(computed / seconds, 2) if computed and seconds > 0 else None,
    }
    _atomic_write(Path(cache_dir) / "report.json", json.dumps(report, indent=1, ensure_ascii=False).encode())
    return ids, feats.astype(np.float32, copy=False), report


def _decode(path: Path, cfg: PreprocessConfig) -> np.ndarray:
    return decode_pixels(path, cfg)  # the serving decode path and limits: offline and served features agree


def _encode_chunk(
    session: ort.InferenceSession,
    input_name: str,
    span: Sequence[tuple[str, str, Path]],
    cfg: PreprocessConfig,
    batch_size: int,
    run_batch: int,
    pool: ThreadPoolExecutor,
    on_progress: Callable[[int], Any],
) -> _Chunk:
    """Decode (in `pool`, one batch ahead) and encode one chunk of (id, image, path) items."""
    pending: deque[list[tuple[str, str, Future[np.ndarray]]]] = deque()
    batches = iter(range(0, len(span), batch_size))

    def submit_next() -> None:
        start = next(batches, None)
        if start is not None:
            pending.append(
                [(i, im, pool.submit(_decode, p, cfg)) for i, im, p in span[start : start + batch_size]]
            )

    ids: list[str] = []
    feats: list[np.ndarray] = []
    skipped: list[dict[str, str]] = []
    try:
        submit_next()
        submit_next()
        while pending:
            batch = pending.popleft()
            submit_next()
            arrays = []
            for image_id, image, fut in batch:
                try:
                    arrays.append(fut.result())
                    ids.append(image_id)
                except ImageError as e:
                    skipped.append({"id": image_id, "image": image, "reason": str(e)})
            if arrays:
                feats.append(_encode(session, input_name, np.stack(arrays), run_batch))
            on_progress(len(batch))
    finally:
        for batch in pending:
            for *_, fut in batch:
                fut.cancel()
    features = np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)
    return _Chunk(ids, features.astype(np.float32, copy=False), skipped)


def _encode(session: ort.InferenceSession, input_name: str, x: np.ndarray, run_batch: int) -> np.ndarray:
    """[B,3,S,S] -> [B,D]; [B,10,3,S,S] -> mean over the 10 crops [B,D]. At most `run_batch` crops per run."""
    crops = x.shape[1] if x.ndim == 5 else 1
    flat = x.reshape(-1, *x.shape[-3:])
    out = np.concatenate(
        [session.run(None, {input_name: flat[i : i + run_batch]})[0] for i in range(0, len(flat), run_batch)]
    )
    return out.reshape(len(x), crops, -1).mean(axis=1) if crops > 1 else out


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


def _output_dim(session: ort.InferenceSession) -> int:
    d = session.get_outputs()[0].shape[-1]
    return d if isinstance(d, int) else 0


def _outputs_unit_norm(session: ort.InferenceSession, input_name: str, cfg: PreprocessConfig) -> bool:
    """Does the encoder L2-normalise? (probe with one random image)"""
    x = np.random.default_rng(0).standard_normal((1, 3, cfg.image_size, cfg.image_size)).astype(np.float32)
    norm = float(np.linalg.norm(session.run(None, {input_name: x})[0]))
    return abs(norm - 1.0) < UNIT_NORM_TOL


def _ids_hash(span: Sequence[tuple[str, str, Path]]) -> str:
    h = hashlib.sha1()
    for image_id, image, _ in span:
        h.update(f"{image_id}\t{image}\n".encode())
    return h.hexdigest()[:12]


def _load_chunk(path: Path, span: Sequence[tuple[str, str, Path]]) -> _Chunk | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            chunk = _Chunk([str(i) for i in z["ids"]], z["features"], json.loads(str(z["skipped"])))
    except (OSError, ValueError, KeyError):  # unreadable cache file: recompute it
        return None
    expected = {i for i, _, _ in span}
    if set(chunk.ids) | {s["id"] for s in chunk.skipped} != expected or len(chunk.ids) != len(chunk.features):
        return None
    return chunk


def _save_chunk(path: Path, chunk: _Chunk) -> None:
    save_npz_atomic(
        path,
        ids=np.array(chunk.ids, dtype=str),
        features=chunk.features,
        skipped=np.array(json.dumps(chunk.skipped)),
    )


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
