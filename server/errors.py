"""The one place where exceptions become gRPC status codes.

Servicer methods are wrapped by `map_errors`; the service layer and the engine raise plain exceptions. In order:
the service's own `ServingError`s carry their code; an exception whose class declares `grpc_status` (the engine's
`xlsearch.search.SearchError` family, `IndexPersistError`) gets that status; otherwise classes are matched by name
along the MRO (library errors: PIL, bundle, index), so this module never imports the engine and a new subclass falls
back to its parent's code. Anything else is INTERNAL with a generic message (details go to the log).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc

log = logging.getLogger(__name__)


class ServingError(Exception):
    """Raised by the service layer; `code` is the gRPC status the client sees."""

    code = grpc.StatusCode.INTERNAL


class InvalidArgument(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class TooLarge(ServingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotReady(ServingError):
    """The bundle and index are still loading (or failed to load)."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServingError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unimplemented(ServingError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Cancelled(ServingError):
    code = grpc.StatusCode.CANCELLED


# Exceptions raised below the service layer, by class name (first match along the MRO wins).
CODE_BY_ERROR_NAME: dict[str, grpc.StatusCode] = {
    # xlsearch.search domain errors
    "InvalidQuery": grpc.StatusCode.INVALID_ARGUMENT,
    "InvalidImage": grpc.StatusCode.INVALID_ARGUMENT,
    "ImageTooLarge": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "NotFound": grpc.StatusCode.NOT_FOUND,
    "DuplicateId": grpc.StatusCode.ALREADY_EXISTS,
    "AlreadyExists": grpc.StatusCode.ALREADY_EXISTS,
    "InvalidArgument": grpc.StatusCode.INVALID_ARGUMENT,
    "SearchError": grpc.StatusCode.INVALID_ARGUMENT,
    # bundle components (xlsearch.tagging, xlsearch.captioning): input the models refuse
    "TagInputError": grpc.StatusCode.INVALID_ARGUMENT,
    "CaptionInputError": grpc.StatusCode.INVALID_ARGUMENT,
    # shared library errors
    "ImageError": grpc.StatusCode.INVALID_ARGUMENT,  # xlsearch.preprocess: corrupt / unsupported image
    "UnidentifiedImageError": grpc.StatusCode.INVALID_ARGUMENT,  # PIL
    "DecompressionBombError": grpc.StatusCode.RESOURCE_EXHAUSTED,  # PIL
    "IndexMismatchError": grpc.StatusCode.FAILED_PRECONDITION,
    "BundleError": grpc.StatusCode.FAILED_PRECONDITION,
    "TimeoutError": grpc.StatusCode.DEADLINE_EXCEEDED,
}


def classify(exc: BaseException) -> tuple[grpc.StatusCode, str, str]:
    """(status code, message for the client, error kind for metrics) of an exception."""
    kind = type(exc).__name__
    if isinstance(exc, ServingError):
        return exc.code, str(exc) or kind, kind
    declared = getattr(type(exc), "grpc_status", None)
    if isinstance(declared, str) and declared in grpc.StatusCode.__members__:
        return grpc.StatusCode[declared], str(exc) or kind, kind
    for cls in type(exc).__mro__:
        code = CODE_BY_ERROR_NAME.get(cls.__name__)
        if code is not None:
            return code, str(exc) or kind, kind
    return grpc.StatusCode.INTERNAL, f"internal error ({kind}); the server logged the details", kind


class ErrorObserver(Protocol):
    def observe_error(self, kind: str, code: grpc.StatusCode) -> None: ...


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
            self.observe_error(kind, code)
            await context.abort(code, message)

    return wrapper
