"""Blocking work (ONNX, FAISS, SQLite, image decoding) off the event loop, within the caller's deadline.

A call whose deadline has passed is refused before it is queued, and dropped if it expires while waiting for a
worker thread. Once a thread has started a computation it cannot be interrupted; the caller stops waiting at the
deadline and the result is discarded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from xlsearch.errors import DeadlineExceeded, ResourceExhausted

T = TypeVar("T")


class ServerBusy(ResourceExhausted):
    """A bounded pool is full: retry later."""


class Deadline:
    """An absolute point on the monotonic clock (or none)."""

    def __init__(self, at: float | None) -> None:
        self.at = at

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        """``seconds`` from now (None: no deadline), e.g. a gRPC context's ``time_remaining()``."""
        return cls(None if seconds is None else time.monotonic() + seconds)

    def remaining(self) -> float | None:
        return None if self.at is None else self.at - time.monotonic()

    def check(self, what: str) -> None:
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded(f"deadline exceeded before {what}")


class BlockingRunner:
    """A bounded thread pool. ``max_pending``: tasks queued or running at once; one more is refused with
    RESOURCE_EXHAUSTED instead of waiting behind the others (the write pool's queue limit)."""

    def __init__(self, threads: int, max_pending: int | None = None, name: str = "xlsearch-worker") -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._max_pending = max_pending
        self._pending = 0  # touched only on the event loop thread
        self.name = name

    async def run(self, deadline: Deadline, what: str, fn: Callable[..., T], *args: object) -> T:
        deadline.check(what)
        if self._max_pending is not None and self._pending >= self._max_pending:
            raise ServerBusy(
                f"the server is busy ({self._pending} {self.name} tasks queued or running); retry later"
            )

        def guarded() -> T:
            deadline.check(what)  # expired while queued: don't compute for a dead call
            return fn(*args)

        self._pending += 1
        future = asyncio.get_running_loop().run_in_executor(self._pool, guarded)
        future.add_done_callback(
            self._done
        )  # counted until the thread is free, not until the caller gives up
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=deadline.remaining())
        except TimeoutError:
            raise DeadlineExceeded(f"deadline exceeded during {what}") from None

    def _done(self, future: asyncio.Future[Any]) -> None:
        self._pending -= 1
        if not future.cancelled():
            future.exception()  # retrieved: a result nobody waits for any more must not log "never retrieved"

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
