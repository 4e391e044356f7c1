"""Prometheus metrics on an injected `CollectorRegistry`, served on their own port.

Nothing here is created at import time: `ServerMetrics(registry)` registers every series on the registry it is
given (tests make a fresh one each), and `MetricsEndpoint` serves that registry alone.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

STAGES = ("tokenize", "encode", "search", "fuse", "metadata")
CACHES = ("result", "embedding")
AUTH_REASONS = ("missing", "malformed", "unknown_key", "role")  # security.AuthError.reason

# Per-RPC latency: a cached search is well under a millisecond, AddImages of a batch may take seconds.
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServerMetrics:
    """Every series the server exports. Names follow the Prometheus conventions (`_total`, `_seconds`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.rpc_requests = Counter(
            "xlsearch_grpc_requests_total",
            "gRPC calls handled, by service, method and status code",
            ["service", "method", "code"],
            registry=registry,
        )
        self.rpc_seconds = Histogram(
            "xlsearch_grpc_request_duration_seconds",
            "gRPC call latency, by service, method and status code",
            ["service", "method", "code"],
            buckets=RPC_BUCKETS,
            registry=registry,
        )
        self.rpc_in_flight = Gauge(
            "xlsearch_grpc_requests_in_flight",
            "gRPC calls being handled",
            ["service", "method"],
            registry=registry,
        )
        self.http_requests = Counter(
            "xlsearch_http_requests_total",
            "HTTP requests handled, by route (path template), method and status code",
            ["route", "method", "status"],
            registry=registry,
        )
        self.http_seconds = Histogram(
            "xlsearch_http_request_duration_seconds",
            "HTTP request latency, by route (path template), method and status code",
            ["route", "method", "status"],
            buckets=RPC_BUCKETS,
            registry=registry,
        )
        self.http_in_flight = Gauge(
            "xlsearch_http_requests_in_flight",
            "HTTP requests being handled, by route",
            ["route"],
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "xlsearch_stage_seconds",
            "Time spent in each search stage (cached searches skip them)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.cache_hits = Counter(
            "xlsearch_cache_hits_total", "Cache lookups that found an entry", ["cache"], registry=registry
        )
        self.cache_misses = Counter(
            "xlsearch_cache_misses_total",
            "Cache lookups that found nothing (including lookups skipped while the backend is down)",
            ["cache"],
            registry=registry,
        )
        self.cache_errors = Counter(
            "xlsearch_cache_errors_total",
            "Cache backend operations that failed (timeouts, lost connections)",
            ["backend"],
            registry=registry,
        )
        self.cache_up = Gauge(
            "xlsearch_cache_up",
            "1 when the cache backend answers, 0 while it is unreachable",
            ["backend"],
            registry=registry,
        )
        self.errors = Counter(
            "xlsearch_errors_total",
            "Failed calls by error kind and status code",
            ["kind", "code"],
            registry=registry,
        )
        self.auth_failures = Counter(
            "xlsearch_auth_failures_total",
            "Calls refused by API key authentication, by reason",
            ["reason"],
            registry=registry,
        )
        self.ready = Gauge(
            "xlsearch_ready", "1 once the bundle and index are loaded and serving", registry=registry
        )
        self.index_images = Gauge("xlsearch_index_images", "Images in the live index", registry=registry)
        self.index_captions = Gauge(
            "xlsearch_index_captions", "Images with an English caption in the live index", registry=registry
        )
        self.index_version = Gauge(
            "xlsearch_index_version", "Live index version (bumped by every change)", registry=registry
        )
        self.added_images = Counter(
            "xlsearch_images_added_total", "Images added through AddImages", registry=registry
        )
        self.deleted_images = Counter(
            "xlsearch_images_deleted_total", "Images removed through DeleteImages", registry=registry
        )
        self.build = Info(
            "xlsearch_build", "Server version and the loaded bundle and index", registry=registry
        )
        # Export the fixed label sets from the start, so dashboards see zeros rather than missing series.
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        for cache in CACHES:
            self.cache_hits.labels(cache)
            self.cache_misses.labels(cache)
        for reason in AUTH_REASONS:
            self.auth_failures.labels(reason)

    def observe_error(self, kind: str, code: str) -> None:
        """A failed call: ``kind`` the error class, ``code`` the transport-neutral code name."""
        self.errors.labels(kind, code).inc()

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_seconds.labels(route, method, str(status)).observe(seconds)

    def observe_stages(self, timings: Mapping[str, float]) -> None:
        for stage, seconds in timings.items():
            self.stage_seconds.labels(stage).observe(max(0.0, float(seconds)))

    def set_index(self, images: int, captions: int, version: int) -> None:
        self.index_images.set(images)
        self.index_captions.set(captions)
        self.index_version.set(version)

    def set_build(self, version: str, bundle_hash: str = "", index_hash: str = "") -> None:
        self.build.info({"version": version, "bundle_hash": bundle_hash, "index_hash": index_hash})


class MetricsEndpoint:
    """`/metrics` for one registry on its own port, in a daemon thread (prometheus-client's WSGI server)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._registry, self._host, self._port = registry, host, port
        self._httpd = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Start serving; returns the bound port (useful with port 0)."""
        self._httpd, self._thread = start_http_server(self._port, addr=self._host, registry=self._registry)
        return self.port

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("metrics endpoint not started")
        return int(self._httpd.server_address[1])

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
