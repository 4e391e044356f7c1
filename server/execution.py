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
from typing import TypeVar

import grpc

from xlsearch.server.errors import DeadlineExceeded

T = TypeVar("T")


class Deadline:
    """An absolute point on the monotonic clock (or none)."""

    def __init__(self, at: float | None) -> None:
        self.at = at

    @classmethod
    def of(cls, context: grpc.aio.ServicerContext) -> Deadline:
        remaining = context.time_remaining()
        return cls(None if remaining is None else time.monotonic() + remaining)

    def remaining(self) -> float | None:
        return None if self.at is None else self.at - time.monotonic()

    def check(self, what: str) -> None:
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded(f"deadline exceeded before {what}")


class BlockingRunner:
    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="xlsearch-worker")

    async def run(self, deadline: Deadline, what: str, fn: Callable[..., T], *args: object) -> T:
        deadline.check(what)

        def guarded() -> T:
            deadline.check(what)  # expired while queued: don't compute for a dead call
            return fn(*args)

        future = asyncio.get_running_loop().run_in_executor(self._pool, guarded)
        try:
            return await asyncio.wait_for(future, timeout=deadline.remaining())
        except TimeoutError:
            raise DeadlineExceeded(f"deadline exceeded during {what}") from None

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
