"""The gRPC side of API keys: one interceptor asks `security.Authenticator` about every ImageSearch call; health
and reflection pass untouched. The decision is made from the call's metadata before any request message is read;
a refused call is answered by a handler that aborts at once, so the outer MetricsInterceptor still records its
status code."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from xlsearch_server.grpc_api.errors import abort
from xlsearch_server.grpc_api.interceptors import (
    OPEN_SERVICES,
    Behavior,
    Continuation,
    replace_behavior,
    split_method,
)
from xlsearch_server.metrics import ServerMetrics
from xlsearch_server.security import Authenticator, AuthError

log = logging.getLogger(__name__)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: Authenticator, metrics: ServerMetrics) -> None:
        self._auth = authenticator
        self._metrics = metrics

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        service, method = split_method(handler_call_details.method)
        if handler is None or service in OPEN_SERVICES:
            return handler
        values = [
            v.decode("latin-1") if isinstance(v, bytes) else str(v)
            for k, v in (handler_call_details.invocation_metadata or ())
            if k.lower() == "authorization"
        ]
        try:
            self._auth.check(method, values)
        except AuthError as error:
            return replace_behavior(handler, self._refuse(error, method))
        return handler

    def _refuse(self, error: AuthError, method: str) -> Behavior:
        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
            self._metrics.auth_failures.labels(error.reason).inc()
            log.info("%s from %s: %s: %s", method, context.peer(), error.code.name, error)
            await abort(context, error, self._metrics)  # type: ignore[arg-type]

        return refuse
