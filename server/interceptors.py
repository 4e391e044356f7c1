"""grpc.aio server interceptors and the helpers they share.

- `MetricsInterceptor` (outermost): per-RPC request counter, latency histogram and in-flight gauge, plus the count
  of in-flight calls with a single response that graceful shutdown waits for (long-lived streams such as health
  Watch never finish by themselves, so shutdown waits for the calls that do and then cancels the streams).
- `auth.AuthInterceptor` (next, when keys are configured).
- `LimitInterceptor`: concurrent calls overall and concurrent AddImages streams; health and reflection exempt.
- `DecodeInterceptor` (innermost): a request that is not valid protobuf answers INVALID_ARGUMENT.

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
from google.protobuf.message import DecodeError

from xlsearch.server.metrics import ServerMetrics

log = logging.getLogger("xlsearch.server")

# Never authenticated, limited or counted against a limit: orchestrators must always see health.
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
ADD_IMAGES = "/xlsearch.v1.ImageSearch/AddImages"

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


# -- concurrency limits ---------------------------------------------------------------------------------------


class LimitInterceptor(grpc.aio.ServerInterceptor):
    """Refuses a call with RESOURCE_EXHAUSTED (never queues it) while `max_calls` calls are being handled, and an
    AddImages stream while `max_adds` are open (each may buffer up to max_add_bytes). Health and reflection are
    not counted and never refused. grpc's own `maximum_concurrent_rpcs` counts every call, so a few idle streams
    could lock out health checks: this is why the limit lives here. Runs on the event loop only (no locks)."""

    def __init__(self, metrics: ServerMetrics, max_calls: int | None, max_adds: int | None) -> None:
        self._metrics = metrics
        self.max_calls, self.max_adds = max_calls, max_adds
        self.calls = 0
        self.adds = 0

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        service, _ = split_method(handler_call_details.method)
        if handler is None or service in OPEN_SERVICES:
            return handler
        is_add = handler_call_details.method == ADD_IMAGES

        async def enter(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self.max_calls is not None and self.calls >= self.max_calls:
                await self._refuse(
                    context,
                    "TooManyCalls",
                    f"server busy: {self.calls} calls in progress, the limit (max_concurrent_rpcs) is "
                    f"{self.max_calls}; retry later",
                )
            if is_add and self.max_adds is not None and self.adds >= self.max_adds:
                await self._refuse(
                    context,
                    "TooManyAddStreams",
                    f"too many AddImages streams: {self.adds} open, the limit (max_concurrent_adds) is "
                    f"{self.max_adds}; retry later",
                )
            self.calls += 1
            self.adds += is_add
            return request

        def leave() -> None:
            self.calls -= 1
            self.adds -= is_add

        return replace_behavior(handler, guarded(behavior_of(handler), enter, leave))

    async def _refuse(self, context: grpc.aio.ServicerContext, kind: str, message: str) -> None:
        code = grpc.StatusCode.RESOURCE_EXHAUSTED
        self._metrics.errors.labels(kind, code.name).inc()
        log.info("refused a call from %s: %s", context.peer(), message)
        await context.abort(code, message)


# -- malformed requests ---------------------------------------------------------------------------------------


class Malformed:
    """What a guarded deserializer returns instead of raising (grpc would answer UNKNOWN and log a traceback)."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except DecodeError as e:
            return Malformed(str(e))

    return parse


class DecodeInterceptor(grpc.aio.ServerInterceptor):
    """Request bytes that are not valid protobuf (garbage, invalid UTF-8 in a string field) answer
    INVALID_ARGUMENT with one log line and `xlsearch_errors_total{kind="MalformedRequest"}`. Every service."""

    KIND = "MalformedRequest"

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
            if isinstance(request, Malformed):
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
            if isinstance(request, Malformed):
                await self._refuse(context, method, request, n)
            yield request
            n += 1

    async def _refuse(
        self, context: grpc.aio.ServicerContext, method: str, bad: Malformed, n: int | None = None
    ) -> None:
        code = grpc.StatusCode.INVALID_ARGUMENT
        where = "request" if n is None else f"message {n} of the stream"
        message = f"malformed {where}: not a valid protobuf message ({bad.error})"
        self._metrics.errors.labels(self.KIND, code.name).inc()
        log.info("%s from %s: %s: %s", method, context.peer(), code.name, message)
        await context.abort(code, message)
