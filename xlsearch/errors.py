"""The one error family of xlsearch. Every error a request can cause carries a transport-neutral ``Code``; each
transport keeps one table from codes to its own statuses (``xlsearch_server.grpc.errors`` for gRPC, the HTTP layer
for HTTP). Domain modules raise these (or subclasses named after what went wrong); they never name a transport.

The bottom layer: this module imports nothing of xlsearch.
"""

from __future__ import annotations

import enum
from typing import ClassVar

__all__ = [
    "Cancelled",
    "Code",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "XlsearchError",
]


class Code(enum.Enum):
    """What kind of failure, independent of the transport (the names follow gRPC's canonical codes)."""

    INVALID_ARGUMENT = "invalid_argument"  # the request is wrong: fix it
    NOT_FOUND = "not_found"  # something the request names does not exist
    RESOURCE_EXHAUSTED = "resource_exhausted"  # too big, too many, or the server is at a limit
    FAILED_PRECONDITION = "failed_precondition"  # the server's state cannot serve this request
    UNAVAILABLE = "unavailable"  # try again later (still loading)
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"
    UNAUTHENTICATED = "unauthenticated"  # no or unknown credentials
    PERMISSION_DENIED = "permission_denied"  # known credentials, role too low
    UNIMPLEMENTED = "unimplemented"
    INTERNAL = "internal"  # a bug: the client gets a generic message, the log the details


class XlsearchError(Exception):
    """Base of every xlsearch error. ``code`` is the class's transport-neutral code; ``str(error)`` the message
    for the client (it must not leak server internals such as file paths)."""

    code: ClassVar[Code] = Code.INTERNAL

    @property
    def kind(self) -> str:
        """Name for metrics and logs (the concrete class)."""
        return type(self).__name__


class InvalidArgument(XlsearchError, ValueError):
    code = Code.INVALID_ARGUMENT


class NotFound(XlsearchError, ValueError):
    code = Code.NOT_FOUND


class ResourceExhausted(XlsearchError):
    code = Code.RESOURCE_EXHAUSTED


class FailedPrecondition(XlsearchError, ValueError):
    code = Code.FAILED_PRECONDITION


class Unavailable(XlsearchError):
    code = Code.UNAVAILABLE


class DeadlineExceeded(XlsearchError):
    code = Code.DEADLINE_EXCEEDED


class Cancelled(XlsearchError):
    code = Code.CANCELLED


class Unauthenticated(XlsearchError):
    code = Code.UNAUTHENTICATED


class PermissionDenied(XlsearchError):
    code = Code.PERMISSION_DENIED


class Unimplemented(XlsearchError):
    code = Code.UNIMPLEMENTED


class Internal(XlsearchError, RuntimeError):
    code = Code.INTERNAL
