"""Search cache: keys, the in-process LRU + TTL, and the Redis backend against a real redis-server (killed and
restarted to check that a dead Redis costs nothing and the backend reconnects by itself)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from server_support import REDIS_SERVER, RedisProcess, free_port

from xlsearch.search.types import Hit, SearchRequest, SearchResult
from xlsearch.search.validate import normalize_query
from xlsearch_server.metrics import ServerMetrics
from xlsearch_server.service.cache import (
    IndexScope,
    MemoryBackend,
    RedisBackend,
    SearchCache,
    embedding_key,
    result_key,
)

needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


@pytest.fixture
def redis_proc(tmp_path: Path):
    proc = RedisProcess(tmp_path)
    proc.start()
    yield proc
    proc.stop()


def run(coro):
    return asyncio.run(coro)


def answer(version: int = 3) -> SearchResult:
    hit = Hit("a", "file:///a.png", 0.9, 0.8, 0.7, "a cat", ["动物"], True)
    return SearchResult(hits=[hit], alpha=0.4, index_version=version, timings={"encode": 0.01})


# -- keys ------------------------------------------------------------------------------------------------------


def test_normalize_query_trims_collapses_and_applies_nfkc():
    assert normalize_query("  红色 \t\n 的  苹果 ") == "红色 的 苹果"
    assert normalize_query("ＡＢＣ１２３") == "ABC123"  # full-width -> ASCII, as the tokenisers see it


def test_result_key_depends_on_everything_that_changes_the_answer():
    scope = IndexScope("bundle", "index", 7)
    q = SearchRequest("猫", 10, "CLM", 0.3, ("a", "b"))
    key = result_key(q, scope)
    assert key == result_key(
        SearchRequest("猫", 10, "CLM", 0.3, ("b", "a")), scope
    )  # tag order is irrelevant
    for other in (
        result_key(q, IndexScope("bundle", "index", 8)),  # index version: every change invalidates
        result_key(q, IndexScope("bundle", "other", 7)),
        result_key(q, IndexScope("other", "index", 7)),
        result_key(SearchRequest("狗", 10, "CLM", 0.3, ("a", "b")), scope),
        result_key(SearchRequest("猫", 5, "CLM", 0.3, ("a", "b")), scope),
        result_key(SearchRequest("猫", 10, "CL", 0.3, ("a", "b")), scope),
        result_key(SearchRequest("猫", 10, "CLM", None, ("a", "b")), scope),
        result_key(SearchRequest("猫", 10, "CLM", 0.3, ("a",)), scope),
    ):
        assert other != key
    # alpha means nothing outside CLM
    assert result_key(SearchRequest("猫", 10, "CL", 0.3), scope) == result_key(
        SearchRequest("猫", 10, "CL"), scope
    )
    assert embedding_key("猫", "bundle", "zh") != embedding_key("猫", "bundle2", "zh")


# -- in-process LRU ----------------------------------------------------------------------------------------------


def test_memory_backend_expires_entries_and_evicts_least_recently_used():
    now = [100.0]
    lru = MemoryBackend(max_entries=2, clock=lambda: now[0])

    async def scenario():
        await lru.set("a", b"1", ttl=10)
        await lru.set("b", b"2", ttl=10)
        assert await lru.get("a") == b"1"  # a is now the most recently used
        await lru.set("c", b"3", ttl=10)  # evicts b
        assert await lru.get("b") is None
        assert await lru.get("a") == b"1" and await lru.get("c") == b"3"
        now[0] += 10.5
        assert await lru.get("a") is None and len(lru) == 1  # expired entries are dropped when read
        await lru.set("d", b"4", ttl=0)  # ttl 0: not cached
        assert await lru.get("d") is None

    run(scenario())


def test_search_cache_round_trips_answers_and_embeddings_and_counts_hits():
    metrics = ServerMetrics(CollectorRegistry())
    cache = SearchCache(MemoryBackend(10), ttl=60, metrics=metrics)
    vecs = (np.arange(6, dtype=np.float32), np.arange(4, dtype=np.float32))  # CM and CL sizes may differ

    async def scenario():
        assert await cache.get_result("k") is None
        await cache.put_result("k", answer())
        got = await cache.get_result("k")
        assert got is not None and got.cached and got.hits == answer().hits and got.alpha == 0.4
        assert got.timings == {}  # timings belong to the call that computed the answer
        await cache.put_embedding("e", vecs)
        got_vecs = await cache.get_embedding("e")
        assert got_vecs is not None and len(got_vecs) == 2
        for a, b in zip(got_vecs, vecs, strict=True):
            np.testing.assert_array_equal(a, b)

    run(scenario())
    reg = metrics.registry
    assert reg.get_sample_value("xlsearch_cache_hits_total", {"cache": "result"}) == 1
    assert reg.get_sample_value("xlsearch_cache_misses_total", {"cache": "result"}) == 1
    assert reg.get_sample_value("xlsearch_cache_hits_total", {"cache": "embedding"}) == 1
    assert reg.get_sample_value("xlsearch_cache_up", {"backend": "memory"}) == 1


def test_cache_ttl_zero_disables_caching():
    cache = SearchCache(MemoryBackend(10), ttl=0)

    async def scenario():
        await cache.put_result("k", answer())
        assert await cache.get_result("k") is None

    run(scenario())


# -- Redis -------------------------------------------------------------------------------------------------------


@needs_redis
def test_redis_backend_survives_a_killed_redis_and_reconnects(redis_proc: RedisProcess):
    metrics = ServerMetrics(CollectorRegistry())
    states: list[bool] = []
    reg = metrics.registry

    async def scenario():
        backend = RedisBackend(
            redis_proc.url, timeout=0.05, retry_max=0.4, metrics=metrics, on_state_change=states.append
        )
        cache = SearchCache(backend, ttl=60, metrics=metrics)
        await cache.put_result("k", answer())
        assert (await cache.get_result("k")) is not None and backend.up

        redis_proc.stop()
        t0 = time.perf_counter()
        for _ in range(20):  # first call notices, the rest are skipped during back-off: all answer at once
            assert await cache.get_result("k") is None
        assert time.perf_counter() - t0 < 0.5
        assert not backend.up and states == [False]
        assert reg.get_sample_value("xlsearch_cache_up", {"backend": "redis"}) == 0
        assert reg.get_sample_value("xlsearch_cache_errors_total", {"backend": "redis"}) >= 1

        redis_proc.start()  # same port, empty (no persistence)
        deadline = time.monotonic() + 5
        while not backend.up and time.monotonic() < deadline:
            await cache.get_result("k")
            await asyncio.sleep(0.05)
        assert backend.up and states == [False, True]
        assert reg.get_sample_value("xlsearch_cache_up", {"backend": "redis"}) == 1
        await cache.put_result("k", answer(4))
        got = await cache.get_result("k")
        assert got is not None and got.index_version == 4
        await cache.close()

    run(scenario())


@needs_redis
def test_redis_entries_expire_with_the_ttl(redis_proc: RedisProcess):
    async def scenario():
        backend = RedisBackend(redis_proc.url, timeout=0.05, retry_max=1)
        await backend.set("short", b"x", ttl=0.15)
        assert await backend.get("short") == b"x"
        await asyncio.sleep(0.3)
        assert await backend.get("short") is None
        await backend.close()

    run(scenario())


def test_redis_backend_with_nothing_listening_answers_misses_quickly():
    async def scenario():
        backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", timeout=0.05, retry_max=1)
        cache = SearchCache(backend, ttl=60)
        t0 = time.perf_counter()
        for _ in range(10):
            await cache.put_result("k", answer())
            assert await cache.get_result("k") is None
        assert time.perf_counter() - t0 < 0.5
        assert not backend.up
        assert not await backend.ping()
        await cache.close()

    run(scenario())
