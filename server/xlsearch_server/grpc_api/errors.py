"""gRPC's one table from xlsearch error codes to status codes, and the decorator that applies it.

Domain code raises the `xlsearch.errors` family; servicer methods are wrapped by `map_errors`, interceptors refuse
with `abort`. Anything outside the family is a bug: INTERNAL with a generic message, the traceback in the log.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, Protocol, TypeVar

import grpc

from xlsearch.errors import Code, XlsearchError

log = logging.getLogger(__name__)

GRPC_STATUS: dict[Code, grpc.StatusCode] = {
    Code.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Code.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Code.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Code.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Code.CANCELLED: grpc.StatusCode.CANCELLED,
    Code.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Code.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Code.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    Code.INTERNAL: grpc.StatusCode.INTERNAL,
}


def classify(exc: BaseException) -> tuple[grpc.StatusCode, str, str]:
    """(status code, message for the client, error kind for metrics) of an exception."""
    if isinstance(exc, XlsearchError):  # its message is written for the client
        return GRPC_STATUS[exc.code], str(exc) or exc.kind, exc.kind
    kind = type(exc).__name__
    return grpc.StatusCode.INTERNAL, f"internal error ({kind}); the server logged the details", kind


class ErrorObserver(Protocol):
    def observe_error(self, kind: str, code: str) -> None: ...


async def abort(context: grpc.aio.ServicerContext, error: XlsearchError, observer: ErrorObserver) -> NoReturn:
    """End the call with `error`'s status and message, counted by `observer` (interceptors' refusals)."""
    code, message, kind = classify(error)
    observer.observe_error(kind, code.name)
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


S = TypeVar("S", bound=ErrorObserver)
Handler = Callable[[S, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def map_errors(method: Handler[S]) -> Handler[S]:
    """Wrap an async servicer method: any exception is aborted with its mapped status code; the server never
    crashes on a request. `self.observe_error(kind, code)` is told about each one (metrics)."""

    @functools.wraps(method)
    async def wrapper(self: S, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            code, message, kind = classify(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("%s failed", method.__name__)
            else:
                log.info("%s: %s: %s", method.__name__, code.name, message)
            self.observe_error(kind, code.name)
            await context.abort(code, message)

    return wrapper
