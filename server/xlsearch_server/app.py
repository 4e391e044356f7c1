"""The assembled server: grpc.aio + health + reflection + interceptors + TLS + background loading, and beside it
on the same event loop the HTTP/JSON API and web page (``http_api``: uvicorn over the same ``SearchService``, the
same key check, the one ``CallLimiter``, the same TLS files).

`SearchServer(settings).start()` binds the port first (health NOT_SERVING), then loads the bundle and index in a
background thread and flips health to SERVING. `stop(grace)` sets NOT_SERVING, stops accepting calls and lets
in-flight ones finish within the grace period. Everything it owns (registry, cache, thread pools) is created
here and passed down; nothing is global, so tests can run several servers in one process.

Interceptors, outermost first: metrics (sees every status, refusals included), API keys (when configured),
concurrency limits, protobuf decoding. Health and reflection skip the keys and the limits.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from xlsearch.v1 import search_pb2 as pb
from xlsearch.v1 import search_pb2_grpc as pb_grpc
from xlsearch_server.grpc_api.auth import AuthInterceptor
from xlsearch_server.grpc_api.guards import DecodeInterceptor, LimitInterceptor
from xlsearch_server.grpc_api.interceptors import InFlightCalls, MetricsInterceptor
from xlsearch_server.grpc_api.servicer import ImageSearchServicer
from xlsearch_server.http_api.guard import Guard
from xlsearch_server.http_api.routes import Routes, build_app
from xlsearch_server.http_api.server import HttpServer, HttpStartError
from xlsearch_server.http_api.thumbnails import Thumbnails
from xlsearch_server.metrics import MetricsEndpoint, ServerMetrics
from xlsearch_server.security import ApiKeys, Authenticator, KeyFileError, exposure_problem, is_loopback
from xlsearch_server.service.cache import SearchCache, build_cache
from xlsearch_server.service.execution import BlockingRunner
from xlsearch_server.service.limits import CallLimiter
from xlsearch_server.service.loading import EngineSlot, load_engine
from xlsearch_server.service.search_service import SearchService
from xlsearch_server.settings import ServerSettings

log = logging.getLogger("xlsearch_server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ImageSearch"].full_name  # xlsearch.v1.ImageSearch
CACHE_HEALTH_NAME = "xlsearch.cache"  # health "details": SERVING while the cache backend answers
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

EngineLoader = Callable[[ServerSettings], Any]


class ServerStartError(RuntimeError):
    """The gRPC port could not be bound, or the security settings forbid serving (keys, TLS files)."""


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS (and with tls_client_ca, required client certificates) or None for plaintext. The files are checked
    with the ssl module first: grpc itself only says "failed to bind" for a bad certificate or key."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            settings.tls_cert, settings.tls_key
        )
        if settings.tls_client_ca is not None:
            ssl.create_default_context(cafile=settings.tls_client_ca)
        cert, key = settings.tls_cert.read_bytes(), settings.tls_key.read_bytes()
        ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca is not None else None
    except (OSError, ssl.SSLError, ValueError) as e:
        files = ", ".join(str(f) for f in (settings.tls_cert, settings.tls_key, settings.tls_client_ca) if f)
        raise ServerStartError(f"cannot use the TLS files ({files}): {e}") from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def load_keys(settings: ServerSettings) -> ApiKeys:
    """The configured API keys, after the loopback rule (see auth.exposure_problem), for the gRPC host and the
    HTTP host alike."""
    try:
        keys = ApiKeys.from_settings(settings)
    except KeyFileError as e:
        raise ServerStartError(str(e)) from None
    problem = exposure_problem(settings, keys)
    if problem is None and settings.http_port is not None and settings.http_host:
        problem = exposure_problem(settings.model_copy(update={"host": settings.http_host}), keys)
    if problem is not None:
        raise ServerStartError(problem)
    return keys


def _in_daemon_thread(fn: Callable[[], Any], name: str) -> asyncio.Future[Any]:
    """Run `fn` in a daemon thread (a process stopping mid-load must not wait for it); await the result."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            future.set_result(value) if ok else future.set_exception(value)

    def work() -> None:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, False, exc)
        else:
            loop.call_soon_threadsafe(settle, True, result)

    threading.Thread(target=work, name=name, daemon=True).start()
    return future


class SearchServer:
    def __init__(
        self,
        settings: ServerSettings,
        engine_loader: EngineLoader = load_engine,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = ServerMetrics(self.registry)
        self.health = health_aio.HealthServicer()
        self.slot = EngineSlot()
        self.load_failed = asyncio.Event()
        self._loaded = asyncio.Event()
        self._engine_loader = engine_loader
        self._runner = BlockingRunner(settings.worker_threads)
        self._writes = BlockingRunner(settings.write_threads, settings.max_queued_writes, "xlsearch-write")
        self._in_flight = InFlightCalls()
        self.limits: CallLimiter | None = None
        self._server: grpc.aio.Server | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._http: HttpServer | None = None
        self.http_port: int | None = None
        self._cache: SearchCache | None = None
        self._service: SearchService | None = None
        self._load_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._stopped = False
        self.port = 0
        self.metrics_port: int | None = None

    @property
    def cache(self) -> SearchCache:
        assert self._cache is not None, "start() first"
        return self._cache

    # -- start ------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        keys = load_keys(s)  # before anything is bound or created: a refusal leaves nothing to clean up
        credentials = server_credentials(s)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, NOT_SERVING)
        self._cache = build_cache(
            s.redis_url,
            s.cache_ttl_seconds,
            s.cache_size,
            s.redis_timeout_seconds,
            s.redis_retry_max_seconds,
            metrics=self.metrics,
            on_state_change=self._cache_state_changed,
        )
        await self.health.set(CACHE_HEALTH_NAME, SERVING if self._cache.up else NOT_SERVING)
        self._service = SearchService(s, self.slot, self._cache, self._runner, self.metrics, self._writes)

        interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor(self.metrics, self._in_flight)]
        if keys:
            interceptors.append(AuthInterceptor(Authenticator(keys), self.metrics))
        elif not is_loopback(s.host):
            log.warning("no API keys and --insecure: every client that reaches %s may add and delete", s.host)
        if keys and credentials is None and not is_loopback(s.host):
            log.warning("API keys travel in plaintext to %s: configure tls_cert and tls_key", s.host)
        self.limits = CallLimiter(s.max_concurrent_rpcs, s.max_concurrent_adds)
        interceptors += [LimitInterceptor(self.metrics, self.limits), DecodeInterceptor(self.metrics)]
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                ("grpc.so_reuseport", 0),  # a port in use is an error, not silently shared
            ],
        )
        pb_grpc.add_ImageSearchServicer_to_server(ImageSearchServicer(self._service, self.metrics), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
        address = f"{_bracket(s.host)}:{s.port}"
        try:
            if credentials is None:
                self.port = server.add_insecure_port(address)
            else:
                self.port = server.add_secure_port(address, credentials)
        except RuntimeError as e:
            raise ServerStartError(f"cannot listen on {address}: {e}") from None
        if self.port == 0:
            raise ServerStartError(f"cannot listen on {address} (in use?)")
        await server.start()
        self._server = server
        security = "plaintext" if credentials is None else "TLS" if s.tls_client_ca is None else "mutual TLS"
        auth = f"{len(keys)} API key(s)" if keys else "no API keys"
        log.info("listening on %s:%d (gRPC, %s, %s)", s.host, self.port, security, auth)

        if s.metrics_port is not None:
            host = s.metrics_host or s.host
            self._metrics_endpoint = MetricsEndpoint(self.registry, host, s.metrics_port)
            self.metrics_port = self._metrics_endpoint.start()
            log.info("metrics on http://%s:%d/metrics", host, self.metrics_port)

        if s.http_port is not None:
            await self._start_http(Authenticator(keys) if keys else None, security)

        self._load_task = asyncio.create_task(self._load(), name="xlsearch-load")

    async def _start_http(self, authenticator: Authenticator | None, security: str) -> None:
        """The HTTP/JSON API and the web page: same service, limiter, keys and TLS files as gRPC."""
        s = self.settings
        assert self._service is not None and self.limits is not None
        thumbnails = Thumbnails(self._service, self._runner, self._service.limits, s.image_root_paths)
        routes = Routes(self._service, thumbnails, s.add_idle_timeout_seconds)
        app = build_app(routes, Guard(self.metrics, authenticator, self.limits), self._readiness)
        host = s.http_host or s.host
        self._http = HttpServer(
            app,
            host,
            s.http_port or 0,
            tls_cert=s.tls_cert,
            tls_key=s.tls_key,
            tls_client_ca=s.tls_client_ca,
            grace_seconds=s.grace_seconds,
        )
        try:
            self.http_port = await self._http.start()
        except HttpStartError as e:
            raise ServerStartError(str(e)) from None
        scheme = "https" if self._http.tls else "http"
        log.info(
            "listening on %s:%d (HTTP, %s); web page %s://%s:%d/",
            host,
            self.http_port,
            security,
            scheme,
            _bracket(host),
            self.http_port,
        )

    def _readiness(self) -> tuple[bool, str]:
        if self._stopped:
            return False, "stopping"
        if self._loaded.is_set():
            return True, ""
        return False, self.slot.error or "still loading"

    async def _load(self) -> None:
        s = self.settings
        log.info("loading bundle %s and index %s", s.bundle, s.index)
        assert self._service is not None
        service = self._service

        def load() -> Any:
            engine = self._engine_loader(s)
            service.loaded(engine)
            return engine

        try:
            engine = await _in_daemon_thread(load, "xlsearch-loader")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            log.error("cannot serve: %s", message)
            self.slot.failed(message)
            self.load_failed.set()
            return
        self.slot.ready(engine)
        self.metrics.ready.set(1)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, SERVING)
        self._loaded.set()
        log.info("ready: serving %s", SERVICE_NAME)

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """True once loaded; False when loading failed or `timeout` passed."""
        waiters = [asyncio.ensure_future(self._loaded.wait()), asyncio.ensure_future(self.load_failed.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        return self._loaded.is_set()

    def _cache_state_changed(self, up: bool) -> None:
        task = asyncio.ensure_future(self.health.set(CACHE_HEALTH_NAME, SERVING if up else NOT_SERVING))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- stop -------------------------------------------------------------------------------------------------
    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, stop accepting calls, let in-flight calls finish within `grace` seconds, release all."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.grace_seconds if grace is None else grace
        await self.health.enter_graceful_shutdown()
        self.metrics.ready.set(0)
        http_stopping = asyncio.ensure_future(self._http.stop()) if self._http is not None else None
        if self._server is not None:
            # stop(grace) refuses new calls at once; calls with one response get up to `grace` to finish, then
            # stop(None) cancels what is left, including streams that never end (health Watch, reflection).
            stopping = asyncio.ensure_future(self._server.stop(grace))
            await self._in_flight.wait_idle(grace)
            await self._server.stop(None)
            await stopping
        if http_stopping is not None:
            await http_stopping
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        self._runner.shutdown()
        self._writes.shutdown()
        if self._cache is not None:
            await self._cache.close()
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.stop()
        log.info("stopped")

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
