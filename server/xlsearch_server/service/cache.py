"""Search cache: query embeddings and result lists, in Redis or an in-process LRU, with a TTL.

Result keys carry the index scope (bundle hash, index identity, index version), so any index change makes every
older entry unreachable: a stale result is never served, nothing has to be deleted, and the TTL reclaims the space.

The Redis backend never makes a search wait on a dead Redis: every call has a short timeout and no retries; after a
failure the backend is marked down and skipped (a miss, answered at once) until a back-off delay has passed, then
the next request tries again (0.25 s, doubling up to `retry_max`). State changes go to the `xlsearch_cache_up`
gauge and to an optional callback (health details).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from xlsearch.search.types import SearchRequest, SearchResult
from xlsearch_server.metrics import ServerMetrics

log = logging.getLogger(__name__)

KEY_PREFIX = "xlsearch:v1"


@dataclass(frozen=True)
class IndexScope:
    """What a result depends on besides the query: the model, which index, and which version of it."""

    bundle_hash: str
    index_id: str
    version: int


def _digest(parts: list[object]) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def result_key(query: SearchRequest, scope: IndexScope) -> str:
    alpha = None if query.mode != "CLM" or query.alpha is None else round(float(query.alpha), 6)
    parts: list[object] = [
        scope.bundle_hash,
        scope.index_id,
        scope.version,
        query.query,
        query.mode,
        alpha,
        query.top_k,
        sorted(set(query.tags)),
        query.min_score,
        query.offset,
        query.image_key,  # a search by image: the indexed id or the sha256 of the bytes
    ]
    return f"{KEY_PREFIX}:result:{_digest(parts)}"


def embedding_key(query_text: str, bundle_hash: str, kind: str) -> str:
    return f"{KEY_PREFIX}:embedding:{_digest([bundle_hash, kind, query_text])}"


# -- backends --------------------------------------------------------------------------------------------------


class CacheBackend(Protocol):
    name: str

    @property
    def up(self) -> bool: ...

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    async def close(self) -> None: ...


class MemoryBackend:
    """In-process LRU with a per-entry TTL. Used from the event loop only."""

    name = "memory"

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_entries
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    @property
    def up(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self._items)

    async def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if expires <= self._clock():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        if self._max <= 0 or ttl <= 0:
            return
        self._items[key] = (self._clock() + ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self._max:
            self._items.popitem(last=False)

    async def close(self) -> None:
        self._items.clear()


class RedisBackend:
    """`redis.asyncio` with short timeouts, no client retries, and back-off while Redis is unreachable."""

    name = "redis"
    FIRST_RETRY_SECONDS = 0.25

    def __init__(
        self,
        url: str,
        timeout: float,
        retry_max: float,
        metrics: ServerMetrics | None = None,
        on_state_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._client = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._timeout = timeout
        self._retry_max = retry_max
        self._metrics = metrics
        self._on_state_change = on_state_change
        self._clock = clock
        self._up = True
        self._delay = 0.0
        self._next_try = 0.0
        self._set_gauge()

    @property
    def up(self) -> bool:
        return self._up

    async def get(self, key: str) -> bytes | None:
        result = await self._call(self._client.get(key), "GET")
        return result if isinstance(result, bytes) else None

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        if ttl > 0:
            await self._call(self._client.set(key, value, px=max(1, int(ttl * 1000))), "SET")

    async def ping(self) -> bool:
        """Try Redis now (ignoring the back-off); True when it answered."""
        self._next_try = 0.0
        return bool(await self._call(self._client.ping(), "PING"))

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._client.aclose(), timeout=1.0)
        except Exception:  # closing a dead connection is not worth an error
            pass

    async def _call(self, op, what: str):  # noqa: ANN001, ANN202 - a redis awaitable and its result
        if not self._up and self._clock() < self._next_try:
            op.close()  # never awaited: backing off
            return None
        try:
            # The socket timeouts bound each read; wait_for bounds connect + write + read together.
            result = await asyncio.wait_for(op, timeout=self._timeout * 4)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # redis.ConnectionError, TimeoutError, OSError, protocol errors
            self._failed(what, exc)
            return None
        self._succeeded()
        return result

    def _failed(self, what: str, exc: BaseException) -> None:
        if self._metrics is not None:
            self._metrics.cache_errors.labels(self.name).inc()
        self._delay = min(self._retry_max, self._delay * 2 if self._delay else self.FIRST_RETRY_SECONDS)
        self._next_try = self._clock() + self._delay
        if self._up:
            log.warning(
                "redis %s failed (%s: %s); searching uncached, retrying in %.2fs",
                what,
                type(exc).__name__,
                exc,
                self._delay,
            )
            self._up = False
            self._state_changed()

    def _succeeded(self) -> None:
        self._delay = 0.0
        if not self._up:
            log.warning("redis is back; caching again")
            self._up = True
            self._state_changed()

    def _state_changed(self) -> None:
        self._set_gauge()
        if self._on_state_change is not None:
            self._on_state_change(self._up)

    def _set_gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.cache_up.labels(self.name).set(1 if self._up else 0)


# -- the cache the service uses --------------------------------------------------------------------------------


class SearchCache:
    """Typed get/put of search answers and query embeddings over a backend, counting hits and misses."""

    def __init__(self, backend: CacheBackend, ttl: float, metrics: ServerMetrics | None = None) -> None:
        self.backend = backend
        self.ttl = ttl
        self._metrics = metrics
        if metrics is not None and backend.name == "memory":
            metrics.cache_up.labels(backend.name).set(1)

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    @property
    def up(self) -> bool:
        return self.backend.up

    @property
    def backend_name(self) -> str:
        return self.backend.name

    async def get_result(self, key: str) -> SearchResult | None:
        raw = await self.backend.get(key) if self.enabled else None
        answer = None
        if raw is not None:
            try:
                answer = SearchResult.from_json(raw)
            except (ValueError, KeyError, TypeError):
                log.warning("dropping an unreadable cached result %s", key)
        self._count("result", answer is not None)
        return answer

    async def put_result(self, key: str, answer: SearchResult) -> None:
        if self.enabled:
            await self.backend.set(key, answer.to_json(), self.ttl)

    async def get_embedding(self, key: str) -> tuple[np.ndarray, ...] | None:
        raw = await self.backend.get(key) if self.enabled else None
        arrays = None
        if raw is not None:
            try:
                with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                    arrays = tuple(npz[f"arr_{i}"] for i in range(len(npz.files)))
            except (ValueError, OSError, KeyError):
                log.warning("dropping an unreadable cached embedding %s", key)
        self._count("embedding", arrays is not None)
        return arrays

    async def put_embedding(self, key: str, arrays: tuple[np.ndarray, ...]) -> None:
        """Query vectors (any number of arrays, e.g. the CM and CL vectors of different sizes)."""
        if self.enabled:
            buf = io.BytesIO()
            np.savez(buf, *(np.ascontiguousarray(a) for a in arrays))
            await self.backend.set(key, buf.getvalue(), self.ttl)

    async def close(self) -> None:
        await self.backend.close()

    def _count(self, cache: str, hit: bool) -> None:
        if self._metrics is not None:
            (self._metrics.cache_hits if hit else self._metrics.cache_misses).labels(cache).inc()


def build_cache(
    redis_url: str | None,
    ttl: float,
    max_entries: int,
    redis_timeout: float,
    redis_retry_max: float,
    metrics: ServerMetrics | None = None,
    on_state_change: Callable[[bool], None] | None = None,
) -> SearchCache:
    """Redis when a URL is given, the in-process LRU otherwise. Call from the running event loop."""
    backend: CacheBackend
    if redis_url:
        backend = RedisBackend(redis_url, redis_timeout, redis_retry_max, metrics, on_state_change)
    else:
        backend = MemoryBackend(max_entries)
    return SearchCache(backend, ttl, metrics)
