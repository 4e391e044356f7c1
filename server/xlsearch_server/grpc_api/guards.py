"""Interceptors that refuse calls before they reach the servicer: concurrency limits and malformed protobuf.

Refusals are handlers that abort, never exceptions out of `intercept_service`, so the MetricsInterceptor records
every refused call with its status code.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from xlsearch.errors import InvalidArgument, XlsearchError
from xlsearch_server.grpc_api.errors import abort
from xlsearch_server.grpc_api.interceptors import (
    OPEN_SERVICES,
    Continuation,
    behavior_of,
    guarded,
    replace_behavior,
    split_method,
)
from xlsearch_server.metrics import ServerMetrics
from xlsearch_server.service.limits import CallLimiter

log = logging.getLogger(__name__)


class LimitInterceptor(grpc.aio.ServerInterceptor):
    """`CallLimiter` for gRPC. grpc's own `maximum_concurrent_rpcs` counts every call, so a few idle streams
    could lock out health checks: this is why the limit lives here, and health and reflection pass uncounted."""

    def __init__(self, metrics: ServerMetrics, limiter: CallLimiter) -> None:
        self._metrics = metrics
        self.limiter = limiter

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        service, method = split_method(handler_call_details.method)
        if handler is None or service in OPEN_SERVICES:
            return handler

        async def enter(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                self.limiter.enter(method)
            except XlsearchError as error:
                log.info("refused a call from %s: %s", context.peer(), error)
                await abort(context, error, self._metrics)
            return request

        return replace_behavior(
            handler, guarded(behavior_of(handler), enter, lambda: self.limiter.leave(method))
        )


class MalformedRequest(InvalidArgument):
    """Request bytes that are not a valid protobuf message (garbage, invalid UTF-8 in a string field)."""


class _Malformed:
    """What a guarded deserializer returns instead of raising (grpc would answer UNKNOWN and log a traceback)."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except DecodeError as e:
            return _Malformed(str(e))

    return parse


class DecodeInterceptor(grpc.aio.ServerInterceptor):
    """Malformed requests answer INVALID_ARGUMENT with one log line and `xlsearch_errors_total{kind=
    "MalformedRequest"}`. Every service."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        streaming = handler.stream_unary is not None or handler.stream_stream is not None

        async def enter(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if streaming:
                return self._checked_stream(request, context, method)
            if isinstance(request, _Malformed):
                await self._refuse(context, method, request)
            return request

        return replace_behavior(
            handler, guarded(behavior_of(handler), enter), _tolerant(handler.request_deserializer)
        )

    async def _checked_stream(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext, method: str
    ) -> AsyncIterator[Any]:
        n = 0
        async for request in requests:
            if isinstance(request, _Malformed):
                await self._refuse(context, method, request, n)
            yield request
            n += 1

    async def _refuse(
        self, context: grpc.aio.ServicerContext, method: str, bad: _Malformed, n: int | None = None
    ) -> None:
        where = "request" if n is None else f"message {n} of the stream"
        error = MalformedRequest(f"malformed {where}: not a valid protobuf message ({bad.error})")
        log.info("%s from %s: %s", method, context.peer(), error)
        await abort(context, error, self._metrics)
