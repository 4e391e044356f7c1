"""What every HTTP route passes through, in the order the gRPC interceptors apply it: metrics (every status,
refusals included) -> API keys (``security.Authenticator``, when keys are configured) -> call limits (the one
``service.limits.CallLimiter`` shared with gRPC) -> the handler, whose errors go through the one table
(``http_api.errors``). Open routes (liveness, readiness, the OpenAPI document, the page) skip keys and limits."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from xlsearch.errors import Code
from xlsearch_server.http_api.errors import classify, error_response
from xlsearch_server.metrics import ServerMetrics
from xlsearch_server.security import Authenticator, AuthError
from xlsearch_server.service.limits import CallLimiter

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]


class Guard:
    def __init__(
        self, metrics: ServerMetrics, authenticator: Authenticator | None, limiter: CallLimiter
    ) -> None:
        self._metrics = metrics
        self._auth = authenticator
        self._limiter = limiter

    def wrap(self, route: str, method: str | None, handler: Handler) -> Handler:
        """``route``: the path template (the metrics label); ``method``: the ImageSearch method whose role and
        limits apply (None: an open route)."""
        metrics = self._metrics

        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            metrics.http_in_flight.labels(route).inc()
            entered = False
            try:
                if method is not None:
                    if self._auth is not None:
                        self._auth.check(method, request.headers.getlist("authorization"))
                    self._limiter.enter(method)
                    entered = True
                response = await handler(request)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a status; the server keeps serving
                response = self._refuse(exc, request, route)
            finally:
                if entered:
                    self._limiter.leave(method)  # type: ignore[arg-type]
                metrics.http_in_flight.labels(route).dec()
            metrics.observe_http(route, request.method, response.status_code, time.perf_counter() - started)
            return response

        return endpoint

    def _refuse(self, exc: Exception, request: Request, route: str) -> Response:
        status, code, message, kind = classify(exc)
        if isinstance(exc, AuthError):
            self._metrics.auth_failures.labels(exc.reason).inc()
        if code is Code.INTERNAL:
            log.error("%s %s failed", request.method, route, exc_info=exc)
        else:
            log.info("%s %s: %d %s: %s", request.method, route, status, code.name, message)
        self._metrics.observe_error(kind, code.name)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return error_response(status, code, message, headers)
