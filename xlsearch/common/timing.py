"""The one stage timer: seconds per named stage, thread-safe (decoder threads may add to one stage at once, so a
stage can count thread-seconds)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class StageTimer:
    """``with timer("encode"): ...`` adds the block's wall time to ``timer.seconds["encode"]``. ``stages`` are
    reported as 0.0 even when they never ran."""

    def __init__(self, stages: Iterable[str] = ()) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(stages, 0.0)
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
