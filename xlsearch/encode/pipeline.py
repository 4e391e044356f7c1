"""The one images -> vectors pipeline, shared by the training feature cache, ``xlsearch index`` and AddImages.

``map_images``: a reader hands items in order; a thread pool decodes them (two batches ahead of the encoder, PIL
and numpy release the GIL for most of the work); the encoder runs batch by batch; items whose decode fails with one
of ``skip`` are reported with the reason instead of stopping the run (AddImages passes no ``skip``: all or nothing).

``Checkpoint`` + ``run_resumable``: batch jobs write every ``chunk_size`` mapped items atomically to a work folder;
a rerun reuses each row whose (id, fingerprint) is already there, so an interrupted job resumes where it stopped.
A row is a dict of named vectors (``None`` where an item has none, e.g. no caption) plus JSON-able ``extra`` and,
for a skipped item, the ``reason``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from xlsearch.common.atomic import save_npz_atomic
from xlsearch.common.timing import StageTimer

T = TypeVar("T")


@dataclass
class Row:
    vectors: dict[str, np.ndarray | None] = field(default_factory=dict)
    extra: Any = None
    reason: str = ""  # non-empty: the item was skipped

    @property
    def skipped(self) -> bool:
        return bool(self.reason)


# encode(items, pixels [B,...]) -> one Row per item
Encode = Callable[[list[T], np.ndarray], list[Row]]


def fingerprint(*parts: object, path: str | os.PathLike[str] | None = None) -> str:
    """Changes when any part or the file at ``path`` (size, mtime) changes: such rows are recomputed on resume."""
    stat = ""
    if path is not None:
        try:
            st = os.stat(path)
            stat = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stat = "missing"
    text = "\0".join(str(p) for p in (*parts, os.fspath(path) if path is not None else "", stat))
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def map_images(
    items: Sequence[T],
    decode: Callable[[T], np.ndarray],
    encode: Encode[T],
    *,
    batch_size: int = 32,
    workers: int = 2,
    skip: tuple[type[BaseException], ...] = (),
    timer: StageTimer | None = None,
    on_progress: Callable[[int], Any] | None = None,
) -> Iterator[tuple[T, Row]]:
    """(item, row) for every item, in order. ``workers=0`` decodes in the calling thread (a server's write pool
    already is the thread to use)."""
    if batch_size < 1 or workers < 0:
        raise ValueError("batch_size must be >= 1 and workers >= 0")
    timer = timer or StageTimer()

    def timed_decode(item: T) -> np.ndarray:
        with timer("decode"):
            return decode(item)

    if workers == 0:
        for start in range(0, len(items), batch_size):
            batch = [(it, _done(timed_decode, it, skip)) for it in items[start : start + batch_size]]
            yield from _encode_batch(batch, encode, skip, timer)
            if on_progress:
                on_progress(len(batch))
        return
    pending: deque[list[tuple[T, Future[np.ndarray]]]] = deque()
    starts = iter(range(0, len(items), batch_size))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:

        def submit_next() -> None:
            start = next(starts, None)
            if start is not None:
                pending.append(
                    [(it, pool.submit(timed_decode, it)) for it in items[start : start + batch_size]]
                )

        try:
            submit_next()
            submit_next()
            while pending:
                batch = pending.popleft()
                submit_next()
                yield from _encode_batch(batch, encode, skip, timer)
                if on_progress:
                    on_progress(len(batch))
        finally:
            for batch in pending:
                for _, fut in batch:
                    fut.cancel()


def _done(
    fn: Callable[[T], np.ndarray], item: T, skip: tuple[type[BaseException], ...]
) -> Future[np.ndarray]:
    fut: Future[np.ndarray] = Future()
    try:
        fut.set_result(fn(item))
    except skip as e:
        fut.set_exception(e)
    return fut


def _encode_batch(
    batch: list[tuple[T, Future[np.ndarray]]],
    encode: Encode[T],
    skip: tuple[type[BaseException], ...],
    timer: StageTimer,
) -> Iterator[tuple[T, Row]]:
    ok: list[tuple[T, np.ndarray]] = []
    rows: dict[int, Row] = {}
    with timer("wait"):
        for n, (item, fut) in enumerate(batch):
            try:
                ok.append((item, fut.result()))
            except skip as e:
                rows[n] = Row(reason=str(e))
    if ok:
        encoded = iter(encode([it for it, _ in ok], np.stack([x for _, x in ok])))
        for n in range(len(batch)):
            if n not in rows:
                rows[n] = next(encoded)
    for n, (item, _) in enumerate(batch):
        yield item, rows[n]


class Checkpoint(Generic[T]):
    """Work folder of chunk files ``chunk_NNNNNN.npz``: ids, fingerprints, one [n, dim] array + presence mask per
    named vector, JSON extras and skip reasons. Later chunks win. ``dims``: the vectors a row holds and their
    sizes; a chunk written with other sizes (another model) is ignored."""

    def __init__(self, folder: str | os.PathLike[str], dims: dict[str, int]):
        self.folder, self.dims = Path(folder), dict(dims)

    def _chunks(self) -> list[Path]:
        return sorted(self.folder.glob("chunk_*.npz")) if self.folder.is_dir() else []

    def load(self) -> dict[tuple[str, str], Row]:
        """(id, fingerprint) -> row, over every readable chunk."""
        rows: dict[tuple[str, str], Row] = {}
        for path in self._chunks():
            try:
                with np.load(path, allow_pickle=False) as z:
                    ids, fps = [str(i) for i in z["ids"]], [str(f) for f in z["fingerprints"]]
                    arrays = {k: (z[f"v_{k}"], z[f"has_{k}"]) for k in self.dims}
                    extras = json.loads(str(z["extra"]))
                    reasons = json.loads(str(z["reasons"]))
            except (OSError, ValueError, KeyError):  # a torn or foreign file: recompute its items
                continue
            if any(
                a.shape != (len(ids), d)
                for (a, _), d in zip(arrays.values(), self.dims.values(), strict=True)
            ):
                continue
            for n, key in enumerate(zip(ids, fps, strict=True)):
                vectors = {k: (a[n] if has[n] else None) for k, (a, has) in arrays.items()}
                rows[key] = Row(vectors, extras[n], reasons[n])
        return rows

    def write(self, rows: Sequence[tuple[str, str, Row]]) -> None:
        if not rows:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        existing = self._chunks()
        n = int(existing[-1].stem.split("_")[1]) + 1 if existing else 0
        arrays: dict[str, np.ndarray] = {}
        for name, dim in self.dims.items():
            values = [r.vectors.get(name) for _, _, r in rows]
            arrays[f"has_{name}"] = np.array([v is not None for v in values], dtype=bool)
            arrays[f"v_{name}"] = np.stack(
                [np.zeros(dim, np.float32) if v is None else np.asarray(v, np.float32) for v in values]
            )
        save_npz_atomic(
            self.folder / f"chunk_{n:06d}.npz",
            ids=np.array([i for i, _, _ in rows], dtype=str),
            fingerprints=np.array([f for _, f, _ in rows], dtype=str),
            extra=np.array(json.dumps([r.extra for _, _, r in rows], ensure_ascii=False)),
            reasons=np.array(json.dumps([r.reason for _, _, r in rows], ensure_ascii=False)),
            **arrays,
        )

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class ResumeResult:
    rows: list[Row]  # one per item, in order
    reused: int  # rows taken from the checkpoint
    computed: int  # items mapped in this run


def run_resumable(
    items: Sequence[T],
    key: Callable[[T], tuple[str, str]],
    decode: Callable[[T], np.ndarray],
    encode: Encode[T],
    checkpoint: Checkpoint[T],
    *,
    batch_size: int = 32,
    workers: int = 2,
    chunk_size: int = 512,
    skip: tuple[type[BaseException], ...] = (),
    timer: StageTimer | None = None,
    on_progress: Callable[[int], Any] | None = None,
) -> ResumeResult:
    """Map the items the checkpoint lacks (by ``key`` = (id, fingerprint)), checkpoint every ``chunk_size``; an
    exception (or Ctrl-C) loses at most the unflushed chunk."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    timer = timer or StageTimer()
    keys = [key(it) for it in items]
    with timer("resume"):
        done = checkpoint.load()
    todo = [it for it, k in zip(items, keys, strict=True) if k not in done]
    chunk: list[tuple[str, str, Row]] = []
    for item, row in map_images(
        todo,
        decode,
        encode,
        batch_size=batch_size,
        workers=workers,
        skip=skip,
        timer=timer,
        on_progress=on_progress,
    ):
        chunk.append((*key(item), row))
        if len(chunk) >= chunk_size:
            with timer("checkpoint"):
                checkpoint.write(chunk)
            chunk = []
    with timer("checkpoint"):
        checkpoint.write(chunk)
    with timer("resume"):
        done = checkpoint.load()
    return ResumeResult([done[k] for k in keys], len(items) - len(todo), len(todo))
