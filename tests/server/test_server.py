"""The gRPC server end to end: a real server on 127.0.0.1 (free port) serving a real bundle + index, talked to with
the generated client stub. Bad input must get the right status code and leave the server answering."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_support import (
    REDIS_SERVER,
    RedisProcess,
    ServedPair,
    ServerThread,
    session_pair,
    test_settings,
)

from xlsearch.v1 import search_pb2 as pb
from xlsearch.v1 import search_pb2_grpc as pb_grpc
from xlsearch_server.service.loading import load_engine
from xlsearch_server.settings import ServerSettings

SERVICE = "xlsearch.v1.ImageSearch"
QUERY = "一只猫"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="session")
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ServedPair:
    return session_pair(request, tmp_path_factory)


@pytest.fixture(scope="module")
def server(pair: ServedPair, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    index = pair.index_copy(tmp_path_factory.mktemp("server"))
    st = ServerThread(test_settings(bundle=pair.bundle, index=index))
    assert st.wait_ready(), st.server.slot.error
    yield st
    st.stop()


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[pb_grpc.ImageSearchStub]:
    with server.channel() as channel:
        yield pb_grpc.ImageSearchStub(channel)


def code_of(call, *args, **kwargs) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value.code()


def still_answers(stub: pb_grpc.ImageSearchStub) -> None:
    assert len(stub.Search(pb.SearchRequest(query=QUERY, top_k=3), timeout=30).hits) == 3


def png_bytes(path: Path) -> bytes:
    return path.read_bytes()


# -- search ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [pb.CL, pb.CM, pb.CLM, pb.MATCH_MODE_UNSPECIFIED])
def test_search_in_every_mode(stub: pb_grpc.ImageSearchStub, mode: int):
    resp = stub.Search(pb.SearchRequest(query=QUERY, top_k=5, mode=mode), timeout=30)
    assert len(resp.hits) == 5
    scores = [h.score for h in resp.hits]
    assert scores == sorted(scores, reverse=True)
    assert len({h.id for h in resp.hits}) == 5 and all(h.uri for h in resp.hits)
    if mode == pb.CL:
        assert resp.alpha == 1.0
    elif mode == pb.CM:
        assert resp.alpha == 0.0
        assert all(h.score == pytest.approx(h.cm_score, abs=1e-5) for h in resp.hits)
    stages = {t.stage for t in resp.timings}
    assert {"tokenize", "encode", "search", "fuse", "metadata"} <= stages or resp.cached
    assert resp.index_version >= 1 and resp.total_seconds > 0


def test_clm_alpha_and_default_top_k(stub: pb_grpc.ImageSearchStub, server: ServerThread):
    resp = stub.Search(pb.SearchRequest(query="红色的苹果", mode=pb.CLM, alpha=0.25), timeout=30)
    assert resp.alpha == pytest.approx(0.25)
    assert len(resp.hits) == server.server.settings.default_top_k
    for h in resp.hits:
        expected = 0.25 * h.cl_score + 0.75 * h.cm_score
        assert h.score == pytest.approx(expected, abs=1e-4)


def test_get_stats_and_tag_caption_without_components(stub: pb_grpc.ImageSearchStub, pair: ServedPair):
    stats = stub.GetStats(pb.GetStatsRequest(), timeout=30)
    assert stats.images >= 50 and 0 < stats.captions <= stats.images
    assert stats.dim > 0 and stats.bundle_hash and stats.index_hash and stats.factory
    assert stats.cache_backend == "memory" and stats.cache_connected
    image = pb.ImageRef(image_bytes=png_bytes(pair.spare_images[0]))
    with pytest.raises(grpc.RpcError) as info:
        stub.Tag(pb.TagRequest(image=image), timeout=30)
    # this bundle has no tagger or captioner attached: a precondition of the server, not a bad request
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "no tagger" in info.value.details()
    assert (
        code_of(stub.Caption, pb.CaptionRequest(image=image), timeout=30)
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    still_answers(stub)


# -- bad input ---------------------------------------------------------------------------------------------------

BAD_SEARCHES = {
    "empty": pb.SearchRequest(query=""),
    "whitespace": pb.SearchRequest(query=" \t\n "),
    "10000 chars": pb.SearchRequest(query="猫" * 10_000),
    "min_score above 1": pb.SearchRequest(
        query=QUERY, min_score=2.0
    ),  # English queries are accepted (issue 12)
    "text and image": pb.SearchRequest(query=QUERY, image=pb.ImageRef(image_id="x")),
    "emoji only": pb.SearchRequest(query="😀🐱🍎"),
    "negative top_k": pb.SearchRequest(query=QUERY, top_k=-1),
    "huge top_k": pb.SearchRequest(query=QUERY, top_k=1_000_000),
    "alpha > 1": pb.SearchRequest(query=QUERY, alpha=1.5),
    "alpha nan": pb.SearchRequest(query=QUERY, alpha=float("nan")),
    "unknown mode": pb.SearchRequest(query=QUERY, mode=7),
    "empty tag": pb.SearchRequest(
        query=QUERY, tags=[""]
    ),  # used to be dropped silently: an unfiltered search
    "blank tag": pb.SearchRequest(query=QUERY, tags=["动物", "  "]),
}


@pytest.mark.parametrize("name", list(BAD_SEARCHES))
def test_bad_search_is_invalid_argument_and_server_still_answers(stub: pb_grpc.ImageSearchStub, name: str):
    with pytest.raises(grpc.RpcError) as info:
        stub.Search(BAD_SEARCHES[name], timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert info.value.details()  # a message for the client
    still_answers(stub)


def test_bad_images_in_add_images(stub: pb_grpc.ImageSearchStub, server: ServerThread):
    limit = server.server.settings.max_image_bytes
    version = stub.GetStats(pb.GetStatsRequest(), timeout=30).index_version
    corrupt = [pb.AddImageRequest(image_bytes=b"\x89PNG\r\n\x1a\n definitely not a png", id="corrupt")]
    assert code_of(stub.AddImages, iter(corrupt), timeout=30) == grpc.StatusCode.INVALID_ARGUMENT
    oversized = [pb.AddImageRequest(image_bytes=b"\0" * (limit + 1), id="huge")]
    assert code_of(stub.AddImages, iter(oversized), timeout=30) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert code_of(stub.AddImages, iter([]), timeout=30) == grpc.StatusCode.INVALID_ARGUMENT
    # nothing was added (all-or-nothing per call) and the server still answers
    assert stub.GetStats(pb.GetStatsRequest(), timeout=30).index_version == version
    still_answers(stub)


def test_tiny_deadline_is_deadline_exceeded_and_server_fine(stub: pb_grpc.ImageSearchStub):
    assert (
        code_of(stub.Search, pb.SearchRequest(query="一条小狗"), timeout=0.001)
        == grpc.StatusCode.DEADLINE_EXCEEDED
    )
    still_answers(stub)


# -- cache + index changes ---------------------------------------------------------------------------------------


def sample(server: ServerThread, name: str, labels: dict[str, str]) -> float:
    return server.registry.get_sample_value(name, labels) or 0.0


def test_repeated_query_hits_the_cache_and_add_images_invalidates_it(
    stub: pb_grpc.ImageSearchStub, server: ServerThread, pair: ServedPair
):
    request = pb.SearchRequest(query="一棵绿色的树", top_k=5, mode=pb.CLM)
    first = stub.Search(request, timeout=30)
    hits_before = sample(server, "xlsearch_cache_hits_total", {"cache": "result"})
    second = stub.Search(pb.SearchRequest(query="  一棵绿色的树 ", top_k=5, mode=pb.CLM), timeout=30)
    assert not first.cached and second.cached
    assert [h.id for h in second.hits] == [h.id for h in first.hits]
    assert sample(server, "xlsearch_cache_hits_total", {"cache": "result"}) == hits_before + 1

    png = pair.spare_images[1]
    added = stub.AddImages(
        iter(
            [
                pb.AddImageRequest(
                    image_bytes=png_bytes(png), id="new/tree", caption="A green tree.", uri=png.as_uri()
                )
            ]
        ),
        timeout=60,
    )
    assert list(added.ids) == ["new/tree"] and added.added == 1 and added.index_version > first.index_version
    third = stub.Search(request, timeout=30)
    assert not third.cached and third.index_version == added.index_version
    assert stub.GetStats(pb.GetStatsRequest(), timeout=30).index_version == added.index_version

    deleted = stub.DeleteImages(pb.DeleteImagesRequest(ids=["new/tree", "no/such/image"]), timeout=30)
    assert deleted.deleted == 1 and list(deleted.not_found) == ["no/such/image"]
    assert deleted.index_version > added.index_version
    fourth = stub.Search(request, timeout=30)
    assert not fourth.cached and "new/tree" not in {h.id for h in fourth.hits}
    assert sample(server, "xlsearch_index_version", {}) == deleted.index_version


def test_add_images_is_persisted(stub: pb_grpc.ImageSearchStub, server: ServerThread, pair: ServedPair):
    from xlsearch.index.image_index import ImageIndex

    png = pair.spare_images[2]
    added = stub.AddImages(
        iter([pb.AddImageRequest(image_bytes=png_bytes(png), id="persisted/one")]), timeout=60
    )
    on_disk = ImageIndex.load(server.server.settings.index)
    assert on_disk.version == added.index_version and on_disk.int_id("persisted/one") is not None


def test_searches_keep_answering_while_images_are_added(
    stub: pb_grpc.ImageSearchStub, server: ServerThread, pair: ServedPair
):
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher() -> None:
        n = 0
        while not stop.is_set():
            try:
                stub.Search(pb.SearchRequest(query=f"猫{n % 7}", top_k=3), timeout=30)
            except grpc.RpcError as e:  # pragma: no cover - reported below
                errors.append(e)
            n += 1

    threads = [threading.Thread(target=searcher) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        batch = [
            pb.AddImageRequest(image_bytes=png_bytes(p), id=f"batch/{n}", caption="A stamp.")
            for n, p in enumerate(pair.spare_images[3:6])
        ]
        added = stub.AddImages(iter(batch), timeout=60)
        assert added.added == 3
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors


# -- health ------------------------------------------------------------------------------------------------------


def test_health_is_not_serving_until_loaded_then_serving(pair: ServedPair, tmp_path: Path):
    release = threading.Event()

    def gated_loader(settings: ServerSettings):
        release.wait(30)
        return load_engine(settings)

    st = ServerThread(
        test_settings(bundle=pair.bundle, index=pair.index_copy(tmp_path)), engine_loader=gated_loader
    )
    try:
        with st.channel() as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = pb_grpc.ImageSearchStub(channel)
            for service in ("", SERVICE):
                assert (
                    health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
                    == NOT_SERVING
                )
            assert (
                code_of(stub.Search, pb.SearchRequest(query=QUERY), timeout=10) == grpc.StatusCode.UNAVAILABLE
            )
            assert code_of(stub.GetStats, pb.GetStatsRequest(), timeout=10) == grpc.StatusCode.UNAVAILABLE
            release.set()
            assert st.wait_ready()
            for service in ("", SERVICE):
                assert (
                    health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == SERVING
                )
            still_answers(stub)
    finally:
        release.set()
        st.stop()


def test_reflection_lists_the_services(server: ServerThread):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with server.channel() as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


# -- Redis -------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_redis_killed_and_restarted_mid_run(pair: ServedPair, tmp_path: Path):
    redis = RedisProcess(tmp_path)
    redis.start()
    settings = test_settings(
        bundle=pair.bundle, index=pair.index_copy(tmp_path), redis_url=redis.url, redis_retry_max_seconds=0.3
    )
    st = ServerThread(settings)
    try:
        assert st.wait_ready(), st.server.slot.error
        with st.channel() as channel:
            stub = pb_grpc.ImageSearchStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            cache_health = health_pb2.HealthCheckRequest(service="xlsearch.cache")
            request = pb.SearchRequest(query="一只小鸟", top_k=5)
            assert not stub.Search(request, timeout=30).cached
            assert stub.Search(request, timeout=30).cached
            assert stub.GetStats(pb.GetStatsRequest(), timeout=30).cache_backend == "redis"

            redis.stop()
            for n in range(15):  # no search fails, and none waits on the dead Redis for long
                t0 = time.perf_counter()
                resp = stub.Search(pb.SearchRequest(query=f"一只小鸟 {n}", top_k=5), timeout=30)
                assert len(resp.hits) == 5 and not resp.cached
                assert time.perf_counter() - t0 < 2.0
            assert not stub.GetStats(pb.GetStatsRequest(), timeout=30).cache_connected
            assert health.Check(cache_health, timeout=10).status == NOT_SERVING
            assert (
                health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING
            )  # still serving
            assert sample(st, "xlsearch_cache_up", {"backend": "redis"}) == 0

            redis.start()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                assert len(stub.Search(request, timeout=30).hits) == 5
                if stub.GetStats(pb.GetStatsRequest(), timeout=30).cache_connected:
                    break
                time.sleep(0.05)
            assert stub.GetStats(pb.GetStatsRequest(), timeout=30).cache_connected
            assert health.Check(cache_health, timeout=10).status == SERVING
            assert sample(st, "xlsearch_cache_up", {"backend": "redis"}) == 1
            stub.Search(request, timeout=30)  # the restarted Redis is empty: this one stores the result again
            assert stub.Search(request, timeout=30).cached
    finally:
        st.stop()
        redis.stop()


def test_metrics_endpoint_shows_real_rpc_and_stage_series(
    stub: pb_grpc.ImageSearchStub, server: ServerThread
):
    import urllib.request

    stub.Search(pb.SearchRequest(query="一辆红色的汽车", top_k=3), timeout=30)
    port = server.server.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'xlsearch_grpc_requests_total{code="OK",method="Search",service="xlsearch.v1.ImageSearch"}' in text
    assert 'xlsearch_grpc_request_duration_seconds_bucket{code="OK",le="0.5",method="Search"' in text
    for stage in ("tokenize", "encode", "search", "fuse", "metadata"):
        assert f'xlsearch_stage_seconds_count{{stage="{stage}"}}' in text
        assert sample(server, "xlsearch_stage_seconds_sum", {"stage": stage}) > 0
    assert "xlsearch_build_info{" in text and "xlsearch_index_images " in text


def test_query_embedding_is_cached_across_different_result_requests(
    stub: pb_grpc.ImageSearchStub, server: ServerThread
):
    hits = sample(server, "xlsearch_cache_hits_total", {"cache": "embedding"})
    first = stub.Search(pb.SearchRequest(query="一朵黄色的花", top_k=3, mode=pb.CL), timeout=30)
    second = stub.Search(pb.SearchRequest(query="一朵黄色的花", top_k=4, mode=pb.CM), timeout=30)
    assert not first.cached and not second.cached  # different result lists ...
    assert sample(server, "xlsearch_cache_hits_total", {"cache": "embedding"}) == hits + 1  # ... one encoding
    encode = {t.stage: t.seconds for t in second.timings}.get("encode", 0.0)
    assert encode < {t.stage: t.seconds for t in first.timings}["encode"]
