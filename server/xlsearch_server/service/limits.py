"""Concurrency limits shared by every transport: calls in progress overall, and AddImages streams open at once.

A call over a limit is refused at once (never queued) with RESOURCE_EXHAUSTED. Health checks are never counted:
the transports do not ask for them, so a few idle streams can never lock out an orchestrator's probes. Used from
one event loop only (no locks).
"""

from __future__ import annotations

from xlsearch.errors import ResourceExhausted

ADD_METHOD = "AddImages"


class TooManyCalls(ResourceExhausted):
    """``max_concurrent_rpcs`` calls are in progress."""


class TooManyAddStreams(ResourceExhausted):
    """``max_concurrent_adds`` AddImages streams are open."""


class CallLimiter:
    def __init__(self, max_calls: int | None, max_adds: int | None) -> None:
        self.max_calls, self.max_adds = max_calls, max_adds
        self.calls = 0
        self.adds = 0

    def enter(self, method: str) -> None:
        """Count a call of ``method`` (an ImageSearch method name), or raise without counting it."""
        if self.max_calls is not None and self.calls >= self.max_calls:
            raise TooManyCalls(
                f"server busy: {self.calls} calls in progress, the limit (max_concurrent_rpcs) is "
                f"{self.max_calls}; retry later"
            )
        is_add = method == ADD_METHOD
        if is_add and self.max_adds is not None and self.adds >= self.max_adds:
            raise TooManyAddStreams(
                f"too many AddImages streams: {self.adds} open, the limit (max_concurrent_adds) is "
                f"{self.max_adds}; retry later"
            )
        self.calls += 1
        self.adds += is_add

    def leave(self, method: str) -> None:
        self.calls -= 1
        self.adds -= method == ADD_METHOD
