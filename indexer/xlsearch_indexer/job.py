"""The batch indexing job: reader -> mapper -> writer, built from injected parts.

- reader: a ``Source`` (``indexer.sources``): the items to index, in order.
- mapper: ``ImageDecoder`` (in a thread pool: file size check, decode, preprocess) and an ``Encoder`` (ONNX image
  encoder + English caption encoder in the bundle's CL space + the bundle's tagger, when it has one), batch by
  batch.
- checkpoint: every ``chunk_size`` mapped items are written atomically to a work folder next to the output, keyed
  by bundle hash; a rerun reuses every row whose fingerprint (path, size, mtime, first caption) still matches.
- writer: ``IndexWriter`` builds the ``ImageIndex``, attaches ``report.json`` and saves it atomically.

Unreadable, missing and oversized images are skipped, counted and listed in the report, never silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from xlsearch.bundle.tagger import confident_tags
from xlsearch.common.atomic import save_npz_atomic
from xlsearch.encode.decode import decode_pixels
from xlsearch.encode.preprocess import (
    DEFAULT_MAX_ASPECT,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
    DecodeLimits,
    ImageError,
    PreprocessConfig,
)
from xlsearch.index.image_index import BundleKey, ImageIndex, ImageMeta
from xlsearch_indexer.sources import Source, SourceItem

# Stored predicted tags need at least this probability (the Tag RPC still returns every top-m^ tag with its score).
DEFAULT_MIN_TAG_SCORE = 0.3

__all__ = [
    "BundleEncoder",
    "Checkpoint",
    "Encoder",
    "ImageDecoder",
    "IndexWriter",
    "JobResult",
    "StageTimer",
    "fingerprint",
    "run_job",
]


# -- timing -----------------------------------------------------------------------------------------------------
class StageTimer:
    """Seconds per stage; thread-safe (decoder threads add to "decode", so it counts thread-seconds)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t0)


# -- mapper parts -----------------------------------------------------------------------------------------------
class ImageDecoder:
    """File -> preprocessed pixels (``decode_pixels``, the server's decode path, with the same default limits);
    raises ImageError (the item is skipped) for missing, oversized or corrupt files, and for images above the
    pixel, side or aspect-ratio limits. Runs in worker threads: PIL decoding and numpy release the GIL for most of
    the work."""

    def __init__(
        self,
        cfg: PreprocessConfig,
        max_bytes: int,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_side: int = DEFAULT_MAX_SIDE,
        max_aspect: float = DEFAULT_MAX_ASPECT,
    ):
        self.cfg, self.max_bytes = cfg, max_bytes
        self.limits = DecodeLimits(max_pixels, max_side, max_aspect)

    def __call__(self, item: SourceItem) -> np.ndarray:
        try:
            size = os.stat(item.path).st_size
        except OSError as e:
            raise ImageError(f"{item.path}: cannot read ({e.strerror or e})") from None
        if size > self.max_bytes:
            raise ImageError(f"{item.path}: {size} bytes exceeds --max-image-bytes={self.max_bytes}")
        return decode_pixels(item.path, self.cfg, self.limits)


class Encoder(Protocol):
    dim: int

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """[B,3,S,S] (or [B,10,3,S,S] oversampled) -> [B,D]."""
        ...

    def encode_images_and_tags(
        self, pixels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, list[tuple[str, ...]]]:
        """[B,D] vectors, [B,F] backbone features (None when the bundle has no feature output) and each image's
        predicted Chinese tags (empty tuples without a tagger)."""
        ...

    def encode_captions(self, texts: list[str]) -> np.ndarray:
        """English captions -> [B,D] in the bundle's CL space."""
        ...


class BundleEncoder:
    """The bundle's encoders. Image vectors equal ``Bundle.encode_images`` (same crop averaging and
    re-normalisation), so images indexed here and images added to a running server are comparable."""

    def __init__(self, bundle: Any, predict_tags: bool = True, min_tag_score: float = DEFAULT_MIN_TAG_SCORE):
        self.bundle = bundle
        self.dim = int(bundle.dim)
        self.tagger = getattr(bundle, "tagger", None) if predict_tags else None
        self.min_tag_score = min_tag_score

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        return self.bundle.encode_pixels(pixels)

    def encode_images_and_tags(
        self, pixels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, list[tuple[str, ...]]]:
        """One backbone pass gives the index vector and the feature the index stores (Tag/Caption by id) and the
        tagger reads (top-m^ tags by LQP)."""
        if not self.bundle.has_features:
            return self.encode_images(pixels), None, [()] * len(pixels)
        vecs, feats = self.bundle.encode_pixels_with_features(pixels)
        if self.tagger is None:
            return vecs, feats, [()] * len(pixels)
        return vecs, feats, confident_tags(self.tagger.predict(feats), self.min_tag_score)

    def encode_captions(self, texts: list[str]) -> np.ndarray:
        return self.bundle.cl_vectors(texts, "en")


def merge_tags(given: Sequence[str], predicted: Sequence[str]) -> tuple[str, ...]:
    """The source's own tags first, then the predicted ones it does not already have."""
    return tuple(dict.fromkeys([*given, *predicted]))


def fingerprint(item: SourceItem) -> str:
    """Changes when the file or the CL description changes: such rows are recomputed on resume."""
    try:
        st = os.stat(item.path)
        stat = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        stat = "missing"
    caption = item.captions[0] if item.captions else ""
    return hashlib.sha1(f"{item.id}\0{item.path}\0{stat}\0{caption}".encode()).hexdigest()[:20]


# -- checkpoint -------------------------------------------------------------------------------------------------
@dataclass
class Chunk:
    ids: list[str] = field(default_factory=list)
    fingerprints: list[str] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)  # empty when the bundle has no feature output
    captions: list[np.ndarray | None] = field(default_factory=list)
    tags: list[tuple[str, ...]] = field(default_factory=list)  # predicted Chinese tags
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"id", "path", "reason", "fingerprint"}

    def __len__(self) -> int:
        return len(self.ids) + len(self.skipped)


@dataclass
class Row:
    image: np.ndarray | None  # None: skipped
    caption: np.ndarray | None
    reason: str = ""
    tags: tuple[str, ...] = ()  # predicted
    feature: np.ndarray | None = None


class Checkpoint:
    """Work folder of chunk files ``chunk_NNNNNN.npz`` (ids, fingerprints, vectors, skipped). Later chunks win."""

    def __init__(self, folder: str | os.PathLike[str], dim: int, cl_dim: int, feature_dim: int = 0):
        self.folder, self.dim, self.cl_dim, self.feature_dim = Path(folder), dim, cl_dim, feature_dim

    @classmethod
    def next_to(cls, out: str | os.PathLike[str], key: BundleKey) -> Checkpoint:
        out = Path(out).absolute()
        return cls(
            out.parent / f".{out.name}.work-{key.bundle_hash[:16]}", key.dim, key.cl_dim, key.feature_dim
        )

    def _chunks(self) -> list[Path]:
        return sorted(self.folder.glob("chunk_*.npz")) if self.folder.is_dir() else []

    def load(self) -> dict[tuple[str, str], Row]:
        """(id, fingerprint) -> row, over every readable chunk."""
        rows: dict[tuple[str, str], Row] = {}
        for path in self._chunks():
            try:
                with np.load(path, allow_pickle=False) as z:
                    ids, fps = [str(i) for i in z["ids"]], [str(f) for f in z["fingerprints"]]
                    images, captions, has_cap = z["images"], z["captions"], z["has_caption"]
                    skipped = json.loads(str(z["skipped"]))
                    tags = json.loads(str(z["tags"])) if "tags" in z.files else [[] for _ in ids]
                    feats = z["features"] if "features" in z.files else np.zeros((len(ids), 0), np.float32)
            except (OSError, ValueError, KeyError):  # a torn or foreign file: recompute its items
                continue
            if images.shape[1:] != (self.dim,) or captions.shape[1:] != (self.cl_dim,):
                continue
            if feats.shape != (len(ids), self.feature_dim):
                continue  # written before features were stored (or by another bundle): recompute
            for n, (i, f) in enumerate(zip(ids, fps, strict=True)):
                feature = feats[n] if self.feature_dim else None
                rows[(i, f)] = Row(
                    images[n], captions[n] if has_cap[n] else None, tags=tuple(tags[n]), feature=feature
                )
            for s in skipped:
                rows[(s["id"], s["fingerprint"])] = Row(None, None, s["reason"])
        return rows

    def write(self, chunk: Chunk) -> None:
        if not len(chunk):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        existing = self._chunks()
        n = int(existing[-1].stem.split("_")[1]) + 1 if existing else 0
        images = np.stack(chunk.images) if chunk.images else np.zeros((0, self.dim), np.float32)
        has_cap = np.array([c is not None for c in chunk.captions], dtype=bool)
        blank = np.zeros(self.cl_dim, np.float32)
        captions = np.stack([blank if c is None else c for c in chunk.captions] or [blank])[: len(has_cap)]
        save_npz_atomic(
            self.folder / f"chunk_{n:06d}.npz",
            ids=np.array(chunk.ids, dtype=str),
            fingerprints=np.array(chunk.fingerprints, dtype=str),
            images=images.astype(np.float32),
            features=(
                np.stack(chunk.features).astype(np.float32)
                if chunk.features
                else np.zeros((len(chunk.ids), self.feature_dim), np.float32)
            ),
            captions=captions.astype(np.float32),
            has_caption=has_cap,
            skipped=np.array(json.dumps(chunk.skipped, ensure_ascii=False)),
            tags=np.array(json.dumps([list(t) for t in chunk.tags], ensure_ascii=False)),
        )

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


# -- writer -----------------------------------------------------------------------------------------------------
class IndexWriter:
    """Builds the index from mapped rows and saves it atomically with its report."""

    def __init__(self, bundle: Any, factory: str, out: str | os.PathLike[str]):
        self.bundle, self.factory, self.out = bundle, factory, Path(out)
        self.key = BundleKey.of(bundle)
        ImageIndex.create(self.key, factory)  # fail fast on a bad factory string

    def write(
        self, items: Sequence[SourceItem], rows: Sequence[Row], report: dict[str, Any], timer: StageTimer
    ) -> Path:
        with timer("index"):
            index = ImageIndex.create(self.key, self.factory)
            kept = [(it, r) for it, r in zip(items, rows, strict=True) if r.image is not None]
            if kept:
                metas = [ImageMeta(it.id, it.uri, it.captions, merge_tags(it.tags, r.tags)) for it, r in kept]
                feats = [r.feature for _, r in kept]
                index.add(
                    metas,
                    np.stack([r.image for _, r in kept]),
                    [r.caption for _, r in kept],
                    features=np.stack(feats) if all(f is not None for f in feats) else None,
                )
        index.report = report
        with timer("save"):
            return index.save(self.out)


# -- the job ----------------------------------------------------------------------------------------------------
@dataclass
class JobResult:
    out: Path
    total: int
    indexed: int
    skipped: list[dict[str, str]]
    reused: int  # rows taken from the checkpoint
    computed: int  # items mapped in this run
    seconds: dict[str, float]
    wall_seconds: float

    @property
    def images_per_second(self) -> float:
        mapping = self.seconds.get("map", 0.0)
        return self.computed / mapping if mapping > 0 else 0.0


def run_job(
    source: Source,
    decoder: Callable[[SourceItem], np.ndarray],
    encoder: Encoder,
    checkpoint: Checkpoint,
    writer: IndexWriter,
    *,
    batch_size: int = 32,
    workers: int = 2,
    chunk_size: int = 512,
    progress: bool = True,
    timer: StageTimer | None = None,
    settings: dict[str, Any] | None = None,
) -> JobResult:
    if batch_size < 1 or workers < 1 or chunk_size < 1:
        raise ValueError("batch_size, workers and chunk_size must be >= 1")
    timer = timer or StageTimer()
    t_start = time.perf_counter()
    items = source.items
    with timer("resume"):
        fps = [fingerprint(it) for it in items]
        done = checkpoint.load()
    todo = [(it, fp) for it, fp in zip(items, fps, strict=True) if (it.id, fp) not in done]
    reused = len(items) - len(todo)
    bar = tqdm(total=len(items), initial=reused, unit="img", desc="indexing", disable=not progress)
    try:
        with timer("map"):
            _map(todo, decoder, encoder, checkpoint, batch_size, workers, chunk_size, timer, bar.update)
    finally:
        bar.close()
    with timer("resume"):
        done = checkpoint.load()
    rows = [done[(it.id, fp)] for it, fp in zip(items, fps, strict=True)]
    skipped = [
        {"id": it.id, "path": str(it.path), "reason": r.reason}
        for it, r in zip(items, rows, strict=True)
        if r.image is None
    ]
    indexed = len(items) - len(skipped)
    report = {
        "source": source.description,
        "bundle_hash": writer.key.bundle_hash,
        "factory": writer.factory,
        "total": len(items),
        "indexed": indexed,
        "captions": sum(1 for it, r in zip(items, rows, strict=True) if r.image is not None and it.captions),
        "n_skipped": len(skipped),
        "skipped": skipped,
        "warnings": source.warnings,
        "reused_from_checkpoint": reused,
        "computed": len(todo),
        "settings": settings or {"batch_size": batch_size, "workers": workers, "chunk_size": chunk_size},
        "seconds": {k: round(v, 3) for k, v in timer.seconds.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = writer.write(items, rows, report, timer)
    checkpoint.clear()
    return JobResult(
        out,
        len(items),
        indexed,
        skipped,
        reused,
        len(todo),
        dict(timer.seconds),
        time.perf_counter() - t_start,
    )


def _map(
    todo: list[tuple[SourceItem, str]],
    decoder: Callable[[SourceItem], np.ndarray],
    encoder: Encoder,
    checkpoint: Checkpoint,
    batch_size: int,
    workers: int,
    chunk_size: int,
    timer: StageTimer,
    on_progress: Callable[[int], Any],
) -> None:
    """Decode in a thread pool (two batches ahead of the encoder), encode batch by batch, checkpoint every
    ``chunk_size`` items. An exception (or Ctrl-C) loses at most the unflushed chunk."""

    def decode(item: SourceItem) -> np.ndarray:
        with timer("decode"):
            return decoder(item)

    batches = iter(range(0, len(todo), batch_size))
    pending: deque[list[tuple[SourceItem, str, Future[np.ndarray]]]] = deque()
    chunk = Chunk()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:

        def submit_next() -> None:
            start = next(batches, None)
            if start is not None:
                pending.append(
                    [(it, fp, pool.submit(decode, it)) for it, fp in todo[start : start + batch_size]]
                )

        try:
            submit_next()
            submit_next()
            while pending:
                batch = pending.popleft()
                submit_next()
                ok: list[tuple[SourceItem, str, np.ndarray]] = []
                with timer("wait"):
                    for it, fp, fut in batch:
                        try:
                            ok.append((it, fp, fut.result()))
                        except ImageError as e:
                            chunk.skipped.append(
                                {"id": it.id, "path": str(it.path), "reason": str(e), "fingerprint": fp}
                            )
                if ok:
                    _encode_batch(ok, encoder, chunk, timer)
                on_progress(len(batch))
                if len(chunk) >= chunk_size:
                    with timer("checkpoint"):
                        checkpoint.write(chunk)
                    chunk = Chunk()
            with timer("checkpoint"):
                checkpoint.write(chunk)
        finally:
            for batch in pending:
                for *_, fut in batch:
                    fut.cancel()


def _encode_batch(
    ok: list[tuple[SourceItem, str, np.ndarray]], encoder: Encoder, chunk: Chunk, timer: StageTimer
) -> None:
    with timer("encode_images"):
        vecs, feats, tags = encoder.encode_images_and_tags(np.stack([x for _, _, x in ok]))
        vecs = np.asarray(vecs, dtype=np.float32)
    if feats is not None:
        chunk.features.extend(np.asarray(feats, dtype=np.float32))
    captioned = [n for n, (it, _, _) in enumerate(ok) if it.captions]
    caps: list[np.ndarray | None] = [None] * len(ok)
    if captioned:
        with timer("encode_captions"):
            cv = np.asarray(
                encoder.encode_captions([ok[n][0].captions[0] for n in captioned]), dtype=np.float32
            )
        for n, v in zip(captioned, cv, strict=True):
            caps[n] = v
    for (it, fp, _), v, c, t in zip(ok, vecs, caps, tags, strict=True):
        chunk.ids.append(it.id)
        chunk.fingerprints.append(fp)
        chunk.images.append(v)
        chunk.captions.append(c)
        chunk.tags.append(tuple(t))
