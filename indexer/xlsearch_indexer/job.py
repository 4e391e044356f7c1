"""The batch indexing job: reader -> mapper -> writer, built from injected parts, on the one image pipeline
(``xlsearch.encode.pipeline``).

- reader: a ``Source`` (``xlsearch_indexer.sources``): the items to index, in order.
- mapper: ``ImageDecoder`` (in a thread pool: file size check, decode, preprocess) and an ``Encoder`` (ONNX image
  encoder + the bundle's tagger, when it has one), batch by batch; meanwhile ``captions.CaptionStage`` encodes each
  distinct first caption once (the English caption encoder in the bundle's CL space) in its own thread.
- checkpoint: every ``chunk_size`` mapped items are written atomically to a work folder next to the output, keyed
  by bundle hash; a rerun reuses every row whose fingerprint (id, path, size, mtime, first caption) still matches.
- writer: ``IndexWriter`` builds the ``ImageIndex``, attaches ``report.json`` and saves it atomically.

Unreadable, missing and oversized images are skipped, counted and listed in the report, never silently dropped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.common.progress import progress as progress_bar
from xlsearch.common.timing import StageTimer
from xlsearch.encode.pipeline import Checkpoint, ResumeResult, Row, run_resumable
from xlsearch.encode.pipeline import fingerprint as _fingerprint
from xlsearch.encode.preprocess import ImageError
from xlsearch.index.image_index import BundleKey, ImageIndex, ImageMeta
from xlsearch_indexer.captions import CaptionStage
from xlsearch_indexer.encoder import BundleEncoder, Encoder, ImageDecoder
from xlsearch_indexer.sources import Source, SourceItem

__all__ = [
    "BundleEncoder",
    "Encoder",
    "ImageDecoder",
    "IndexWriter",
    "JobResult",
    "checkpoint_for",
    "fingerprint",
    "run_job",
]


def fingerprint(item: SourceItem) -> str:
    """Changes when the file or the CL description changes: such rows are recomputed on resume."""
    return _fingerprint(item.id, item.captions[0] if item.captions else "", path=item.path)


def merge_tags(given: Sequence[str], predicted: Sequence[str]) -> tuple[str, ...]:
    """The source's own tags first, then the predicted ones it does not already have."""
    return tuple(dict.fromkeys([*given, *predicted]))


def checkpoint_for(out: str | os.PathLike[str], key: BundleKey) -> Checkpoint[SourceItem]:
    """The work folder next to ``out``, one per bundle: ``.<out>.work-<bundle hash>``."""
    out = Path(out).absolute()
    dims = {"image": key.dim}
    if key.feature_dim:
        dims["feature"] = key.feature_dim
    return Checkpoint(out.parent / f".{out.name}.work-{key.bundle_hash[:16]}", dims)


def encode_rows(encoder: Encoder, timer: StageTimer) -> Callable[[list[SourceItem], np.ndarray], list[Row]]:
    """The pipeline's encode step: image vectors, features and predicted tags (captions: ``CaptionStage``)."""

    def encode(items: list[SourceItem], pixels: np.ndarray) -> list[Row]:
        with timer("encode_images"):
            vecs, feats, tags = encoder.encode_images_and_tags(pixels)
        return [
            Row({"image": vecs[n], "feature": None if feats is None else feats[n]}, extra=list(tags[n]))
            for n in range(len(items))
        ]

    return encode


# -- writer -----------------------------------------------------------------------------------------------------
class IndexWriter:
    """Builds the index from mapped rows and saves it atomically with its report."""

    def __init__(
        self,
        bundle: Any,
        factory: str,
        out: str | os.PathLike[str],
        ef_search: int | None = None,
        nprobe: int | None = None,
    ):
        if (ef_search is not None and ef_search < 1) or (nprobe is not None and nprobe < 1):
            raise ValueError("--ef-search and --nprobe must be >= 1")
        self.bundle, self.factory, self.out = bundle, factory, Path(out)
        self.ef_search, self.nprobe = ef_search, nprobe
        self.key = BundleKey.of(bundle)
        ImageIndex.create(self.key, factory)  # fail fast on a bad factory string

    def write(
        self,
        items: Sequence[SourceItem],
        rows: Sequence[Row],
        report: dict[str, Any],
        timer: StageTimer,
        roots: Sequence[str] = (),
    ) -> Path:
        with timer("index"):
            index = ImageIndex.create(self.key, self.factory)
            kept = [(it, r) for it, r in zip(items, rows, strict=True) if not r.skipped]
            if kept:
                metas = [
                    ImageMeta(it.id, it.uri, it.captions, merge_tags(it.tags, r.extra or ()))
                    for it, r in kept
                ]
                feats = [r.vectors.get("feature") for _, r in kept]
                index.add(
                    metas,
                    np.stack([r.vectors["image"] for _, r in kept]),
                    [r.vectors["caption"] for _, r in kept],
                    features=np.stack(feats) if all(f is not None for f in feats) else None,
                )
        index.report = report
        index.source_roots = list(roots)
        if self.ef_search is not None:
            index.ef_search = self.ef_search
        if self.nprobe is not None:
            index.nprobe = self.nprobe
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
    checkpoint: Checkpoint[SourceItem],
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
    texts = list(dict.fromkeys(it.captions[0] for it in items if it.captions))
    with (
        progress_bar(total=len(items), unit="img", desc="images", disable=not progress) as bar,
        progress_bar(total=len(texts), unit="caption", desc="captions", disable=not progress) as cap_bar,
        timer("map"),
    ):
        captions = CaptionStage(
            texts,
            encoder.encode_captions,
            checkpoint.folder / "captions",
            writer.key.cl_dim,
            chunk_size=chunk_size,
            timer=timer,
            on_progress=cap_bar.update,
        ).start()
        done = run_resumable(
            items,
            lambda it: (it.id, fingerprint(it)),
            decoder,
            encode_rows(encoder, timer),
            checkpoint,
            batch_size=batch_size,
            workers=workers,
            chunk_size=chunk_size,
            skip=(ImageError,),
            timer=timer,
            on_progress=bar.update,
        )
        with timer("wait_captions"):
            vectors = captions.result()
    return finish_job(
        source, done, vectors, checkpoint, writer, timer, settings, t_start, batch_size, workers, chunk_size
    )


def finish_job(
    source: Source,
    done: ResumeResult,
    vectors: dict[str, np.ndarray],
    checkpoint: Checkpoint[SourceItem],
    writer: Any,
    timer: StageTimer,
    settings: dict[str, Any] | None,
    t_start: float,
    batch_size: int,
    workers: int,
    chunk_size: int,
) -> JobResult:
    """The job's end, shared by the local and the Ray job (``ray_job``): the caption vectors joined to the rows,
    the report, the writer, the checkpoint cleared."""
    items = source.items
    texts = {it.captions[0] for it in items if it.captions}
    rows = done.rows
    for it, r in zip(items, rows, strict=True):
        if not r.skipped:
            r.vectors["caption"] = vectors[it.captions[0]] if it.captions else None
    skipped = [
        {"id": it.id, "path": str(it.path), "reason": r.reason}
        for it, r in zip(items, rows, strict=True)
        if r.skipped
    ]
    indexed = len(items) - len(skipped)
    report = {
        "source": source.description,
        "bundle_hash": writer.key.bundle_hash,
        "factory": writer.factory,
        "total": len(items),
        "indexed": indexed,
        "captions": sum(1 for it, r in zip(items, rows, strict=True) if not r.skipped and it.captions),
        "n_skipped": len(skipped),
        "skipped": skipped,
        "warnings": source.warnings,
        "distinct_captions": len(texts),
        "reused_from_checkpoint": done.reused,
        "computed": done.computed,
        "settings": settings or {"batch_size": batch_size, "workers": workers, "chunk_size": chunk_size},
        "seconds": {k: round(v, 3) for k, v in timer.seconds.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = writer.write(items, rows, report, timer, source.roots)
    checkpoint.clear()
    return JobResult(
        out,
        len(items),
        indexed,
        skipped,
        done.reused,
        done.computed,
        dict(timer.seconds),
        time.perf_counter() - t_start,
    )
