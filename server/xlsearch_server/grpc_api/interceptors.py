"""grpc.aio server interceptors and the helpers they share.

- `MetricsInterceptor` (outermost): per-RPC request counter, latency histogram and in-flight gauge, plus the count
  of in-flight calls with a single response that graceful shutdown waits for (long-lived streams such as health
  Watch never finish by themselves, so shutdown waits for the calls that do and then cancels the streams).
- `auth.AuthInterceptor` (next, when keys are configured).
- `guards.LimitInterceptor`: concurrent calls overall and concurrent AddImages streams; health and reflection exempt.
- `guards.DecodeInterceptor` (innermost): a request that is not valid protobuf answers INVALID_ARGUMENT.

Refusals are handlers that abort, never exceptions out of `intercept_service`, so the MetricsInterceptor records
every refused call with its status code.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from xlsearch_server.metrics import ServerMetrics

log = logging.getLogger(__name__)

# Never authenticated, limited or counted against a limit: orchestrators must always see health.
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

Behavior = Callable[[Any, grpc.aio.ServicerContext], Any]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]


def split_method(full_method: str) -> tuple[str, str]:
    """'/xlsearch.v1.ImageSearch/Search' -> ('xlsearch.v1.ImageSearch', 'Search')."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service or "unknown", method or full_method


def final_code(context: grpc.aio.ServicerContext, exc: BaseException | None) -> grpc.StatusCode:
    """The status the call ends with: what the handler set or aborted with, else derived from the exception."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # some grpc versions report the raw status number
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status
    if exc is None:
        return grpc.StatusCode.OK
    if isinstance(exc, asyncio.CancelledError):
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


class InFlightCalls:
    """Calls with a single response (unary-unary, stream-unary) currently being handled."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float | None) -> bool:
        """True when every call finished within `timeout` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: ServerMetrics, in_flight: InFlightCalls | None = None) -> None:
        self._metrics = metrics
        self._in_flight = in_flight or InFlightCalls()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED itself
            return handler
        service, method = split_method(handler_call_details.method)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, service, method),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, service, method),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, service, method),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(handler.stream_stream, service, method),
            handler.request_deserializer,
            handler.response_serializer,
        )

    def _record(self, service: str, method: str, code: grpc.StatusCode, started: float) -> None:
        m = self._metrics
        m.rpc_requests.labels(service, method, code.name).inc()
        m.rpc_seconds.labels(service, method, code.name).observe(time.perf_counter() - started)

    def _wrap_unary(
        self, behavior: Callable[..., Any], service: str, method: str, tracked: bool = True
    ) -> Callable[..., Any]:
        async def wrapped(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            in_flight = self._metrics.rpc_in_flight.labels(service, method)
            in_flight.inc()
            if tracked:
                self._in_flight.enter()
            error: BaseException | None = None
            try:
                result = behavior(request_or_iterator, context)
                if inspect.isawaitable(result):
                    result = await result
                return result
            except BaseException as exc:
                error = exc
                raise
            finally:
                in_flight.dec()
                if tracked:
                    self._in_flight.leave()
                self._record(service, method, final_code(context, error), started)

        return wrapped

    def _wrap_stream(self, behavior: Callable[..., Any], service: str, method: str) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(behavior):  # writes with context.write(), e.g. health Watch
            return self._wrap_unary(behavior, service, method, tracked=False)

        async def wrapped(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            in_flight = self._metrics.rpc_in_flight.labels(service, method)
            in_flight.inc()
            error: BaseException | None = None
            try:
                async for response in behavior(request_or_iterator, context):
                    yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                in_flight.dec()
                self._record(service, method, final_code(context, error), started)

        return wrapped


# -- handler plumbing -------------------------------------------------------------------------------------------


def replace_behavior(
    handler: grpc.RpcMethodHandler,
    behavior: Behavior,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """A handler of the same kind (and serializers) as `handler`, running `behavior`."""
    deserializer = request_deserializer or handler.request_deserializer
    make = (
        grpc.unary_unary_rpc_method_handler
        if handler.unary_unary
        else grpc.stream_unary_rpc_method_handler
        if handler.stream_unary
        else grpc.unary_stream_rpc_method_handler
        if handler.unary_stream
        else grpc.stream_stream_rpc_method_handler
    )
    return make(behavior, deserializer, handler.response_serializer)


def behavior_of(handler: grpc.RpcMethodHandler) -> Behavior:
    return handler.unary_unary or handler.stream_unary or handler.unary_stream or handler.stream_stream


def guarded(
    behavior: Behavior,
    enter: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    leave: Callable[[], None] | None = None,
) -> Behavior:
    """`behavior` preceded by `await enter(request, context)` (which may abort, or return a replacement request)
    and followed by `leave()` once it ends, if `enter` let it start. Keeps async-generator behaviours generators,
    so the MetricsInterceptor still tells response streams from single responses."""
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            request = await enter(request, context)
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                if leave is not None:
                    leave()

        return stream

    async def single(request: Any, context: grpc.aio.ServicerContext) -> Any:
        request = await enter(request, context)
        try:
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
        finally:
            if leave is not None:
                leave()

    return single
