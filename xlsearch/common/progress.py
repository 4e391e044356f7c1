"""One progress display for every long command (training, the feature cache, ``xlsearch index``, dataset
conversion): a tqdm bar when the stream is a terminal, one plain line every ``interval`` seconds and a last line
when it is not (a log file, CI, a pipe), nothing when switched off.

Switched off by a command's ``--no-progress`` (``set_enabled(False)``) or ``XLSEARCH_PROGRESS=0`` in the
environment; ``XLSEARCH_PROGRESS_INTERVAL`` sets the seconds between plain lines (default 30).

    from xlsearch.common.progress import progress
    for epoch in progress(range(epochs), desc="train zh", unit="epoch"):
        ...
    with progress(total=len(items), desc="images", unit="img") as bar:
        bar.update(len(batch))
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

__all__ = ["LineProgress", "NullProgress", "enabled", "progress", "set_enabled"]

DEFAULT_INTERVAL = 30.0
_enabled: bool | None = None  # None: the environment decides


def set_enabled(on: bool | None) -> None:
    """Switch progress output on or off for this process (None: back to the environment's choice)."""
    global _enabled
    _enabled = on


def enabled() -> bool:
    if _enabled is not None:
        return _enabled
    return os.environ.get("XLSEARCH_PROGRESS", "1").strip().lower() not in ("0", "false", "no", "off")


def _interval() -> float:
    try:
        return max(float(os.environ.get("XLSEARCH_PROGRESS_INTERVAL", DEFAULT_INTERVAL)), 0.0)
    except ValueError:
        return DEFAULT_INTERVAL


class NullProgress:
    """Progress switched off: iterates, counts nothing, prints nothing."""

    def __init__(self, iterable: Iterable | None = None) -> None:
        self.iterable = iterable
        self.n = 0

    def __iter__(self) -> Iterator:
        yield from self.iterable or ()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_description(self, desc: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> NullProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LineProgress(NullProgress):
    """Plain lines for a stream that is not a terminal: ``desc: n/total unit (pct) elapsed, rate, postfix``, at
    most one per ``interval`` seconds, and one when closed. ``update`` may be called from another thread."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        interval: float = DEFAULT_INTERVAL,
        file: TextIO | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        super().__init__(iterable)
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.file = file or sys.stderr
        self.clock = clock
        self.start = self.last = clock()
        self.postfix = ""
        self.closed = False
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable or ():
                yield item
                self.update(1)
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n
            now = self.clock()
            if now - self.last >= self.interval:
                self.last = now
                self._write(now)

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        items = dict(args[0]) if args and isinstance(args[0], dict) else {}
        items.update(kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def line(self, now: float | None = None) -> str:
        elapsed = (self.clock() if now is None else now) - self.start
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = f", {self.n / elapsed:.1f} {self.unit}/s" if elapsed > 0 and self.n else ""
        extra = f", {self.postfix}" if self.postfix else ""
        label = f"{self.desc}: " if self.desc else ""
        return f"{label}{count} {self.unit}{pct} in {elapsed:.1f}s{rate}{extra}"

    def _write(self, now: float) -> None:
        print(self.line(now), file=self.file, flush=True)

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._write(self.clock())


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    leave: bool = False,
    disable: bool = False,
    file: TextIO | None = None,
    interval: float | None = None,
) -> Any:
    """A progress display over ``iterable`` (or updated by hand with ``update(n)``): tqdm on a terminal, plain
    periodic lines otherwise, nothing when ``disable`` or switched off. Usable as a context manager."""
    if disable or not enabled():
        return NullProgress(iterable)
    stream = file or sys.stderr
    if _is_tty(stream):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=stream, dynamic_ncols=True)
    return LineProgress(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        interval=_interval() if interval is None else interval,
        file=stream,
    )
