"""HTTP's one table from xlsearch error codes to status codes, and the JSON error body.

Every error a request can cause is an ``xlsearch.errors.XlsearchError`` with a transport-neutral ``Code``; this is
the HTTP twin of ``xlsearch_server.grpc_api.errors.GRPC_STATUS``. Anything outside the family is a bug: 500 with a
generic message, the traceback in the log.
"""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse

from xlsearch.errors import Code, XlsearchError
from xlsearch_server.service.execution import ServerBusy
from xlsearch_server.service.limits import TooManyAddStreams, TooManyCalls

log = logging.getLogger(__name__)

HTTP_STATUS: dict[Code, int] = {
    Code.INVALID_ARGUMENT: 400,
    Code.UNAUTHENTICATED: 401,
    Code.PERMISSION_DENIED: 403,
    Code.NOT_FOUND: 404,
    Code.FAILED_PRECONDITION: 409,
    Code.RESOURCE_EXHAUSTED: 413,  # too large; "too many calls" refusals are 429 (see status_of)
    Code.CANCELLED: 499,
    Code.INTERNAL: 500,
    Code.UNIMPLEMENTED: 501,
    Code.UNAVAILABLE: 503,
    Code.DEADLINE_EXCEEDED: 504,
}
# RESOURCE_EXHAUSTED covers both "this request is too big" (413) and "the server is at a limit, retry later" (429).
BUSY = (TooManyCalls, TooManyAddStreams, ServerBusy)


def status_of(exc: XlsearchError) -> int:
    return 429 if isinstance(exc, BUSY) else HTTP_STATUS[exc.code]


def classify(exc: BaseException) -> tuple[int, Code, str, str]:
    """(HTTP status, code, message for the client, error kind for metrics) of an exception."""
    if isinstance(exc, XlsearchError):  # its message is written for the client
        return status_of(exc), exc.code, str(exc) or exc.kind, exc.kind
    kind = type(exc).__name__
    return 500, Code.INTERNAL, f"internal error ({kind}); the server logged the details", kind


def error_body(code: Code, message: str) -> dict[str, dict[str, str]]:
    """``{"error": {"code": "invalid_argument", "message": "..."}}``: the code names match gRPC's (lower case)."""
    return {"error": {"code": code.value, "message": message}}


def error_response(
    status: int, code: Code, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)
