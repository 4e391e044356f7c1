"""Server behaviour that needs control over timing or failures: deadlines (queued work for a dead call is dropped),
graceful shutdown seen through a health Watch stream, error mapping, failed loads. A real grpc.aio server on a free
loopback port with a scripted engine (same Python API as SearchEngine) in place of the ONNX models."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_support import ScriptedEngine, ServerThread, test_settings

from xlsearch.v1 import search_pb2 as pb
from xlsearch.v1 import search_pb2_grpc as pb_grpc
from xlsearch_server.grpc_api.errors import classify
from xlsearch_server.settings import ServerSettings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def start(engine: ScriptedEngine | Exception, **overrides) -> ServerThread:
    def loader(settings: ServerSettings):
        if isinstance(engine, Exception):
            raise engine
        return engine

    st = ServerThread(test_settings(**overrides), engine_loader=loader)
    st.wait_ready(timeout=10)
    return st


@pytest.fixture
def slow_engine() -> ScriptedEngine:
    return ScriptedEngine(search_seconds=0.6)


@pytest.fixture
def slow_server(slow_engine: ScriptedEngine) -> Iterator[ServerThread]:
    st = start(slow_engine, worker_threads=1)
    yield st
    st.stop(grace=0)


def test_expired_calls_are_not_computed(slow_server: ServerThread, slow_engine: ScriptedEngine):
    """One worker thread, three concurrent searches with a 0.3 s deadline and 0.6 s of work each: all three get
    DEADLINE_EXCEEDED, and only the first ever reaches the engine (the others expire while queued)."""
    with slow_server.channel() as channel:
        stub = pb_grpc.ImageSearchStub(channel)

        def call(n: int) -> grpc.StatusCode:
            try:
                stub.Search(pb.SearchRequest(query=f"猫{n}"), timeout=0.3)
            except grpc.RpcError as e:
                return e.code()
            return grpc.StatusCode.OK

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            codes = list(pool.map(call, range(3)))
        assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 3
        time.sleep(0.8)  # let the one running search finish
        assert slow_engine.searches == 1
        assert len(stub.Search(pb.SearchRequest(query="狗", top_k=2), timeout=5).hits) == 2


def test_sigterm_style_stop_drains_in_flight_calls_and_reports_not_serving(
    slow_server: ServerThread, slow_engine: ScriptedEngine
):
    with slow_server.channel() as channel:
        stub = pb_grpc.ImageSearchStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert next(watch).status == SERVING
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(stub.Search, pb.SearchRequest(query="一只猫", top_k=3), timeout=10)
            while slow_engine.searches == 0:
                time.sleep(0.01)
            stopping = threading.Thread(target=slow_server.call, args=(slow_server.server.stop, 5.0))
            stopping.start()
            assert next(watch).status == NOT_SERVING  # load balancers drain this replica
            assert len(in_flight.result().hits) == 3  # the in-flight call finished within the grace period
            stopping.join()
        with pytest.raises(grpc.RpcError) as info:  # no new calls after the stop
            stub.Search(pb.SearchRequest(query="一只猫"), timeout=2)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


class ExplodingEngine(ScriptedEngine):
    def run(self, *args, **kwargs):
        raise RuntimeError("boom: a bug in the engine")


def test_unexpected_errors_are_internal_and_the_server_keeps_answering():
    st = start(ExplodingEngine())
    try:
        with st.channel() as channel:
            stub = pb_grpc.ImageSearchStub(channel)
            for _ in range(2):
                with pytest.raises(grpc.RpcError) as info:
                    stub.Search(pb.SearchRequest(query="一只猫"), timeout=5)
                assert info.value.code() == grpc.StatusCode.INTERNAL
                assert "boom" not in info.value.details()  # details stay in the server log
            assert stub.GetStats(pb.GetStatsRequest(), timeout=5).images == 20
        assert (
            st.registry.get_sample_value(
                "xlsearch_errors_total", {"kind": "RuntimeError", "code": "INTERNAL"}
            )
            == 2
        )
    finally:
        st.stop()


def test_failed_load_answers_unavailable_with_the_reason():
    from xlsearch.index.image_index import IndexMismatchError

    st = ServerThread(
        test_settings(),
        engine_loader=lambda s: (_ for _ in ()).throw(
            IndexMismatchError("index was built with another bundle")
        ),
    )
    try:
        assert not st.wait_ready(timeout=10)
        assert st.server.load_failed.is_set()
        with st.channel() as channel:
            stub = pb_grpc.ImageSearchStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Search(pb.SearchRequest(query="一只猫"), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "another bundle" in info.value.details()
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == NOT_SERVING
    finally:
        st.stop()


def test_message_size_limit_is_enforced_by_grpc():
    st = start(ScriptedEngine(), max_message_bytes=400 * 1024, max_image_bytes=300 * 1024)
    try:
        with st.channel() as channel:
            stub = pb_grpc.ImageSearchStub(channel)
            too_big = [pb.AddImageRequest(image_bytes=b"\0" * (500 * 1024))]
            with pytest.raises(grpc.RpcError) as info:
                stub.AddImages(iter(too_big), timeout=5)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert len(stub.Search(pb.SearchRequest(query="一只猫", top_k=1), timeout=5).hits) == 1
    finally:
        st.stop()


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("InvalidQuery", grpc.StatusCode.INVALID_ARGUMENT),
        ("InvalidImage", grpc.StatusCode.INVALID_ARGUMENT),
        ("ImageTooLarge", grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("NotFound", grpc.StatusCode.NOT_FOUND),
        ("IndexPersistError", grpc.StatusCode.INTERNAL),
    ],
)
def test_engine_errors_map_to_status_codes(name: str, code: grpc.StatusCode):
    import xlsearch.search.errors as search

    exc = getattr(search, name)("message for the client")
    got, message, kind = classify(exc)
    assert (got, kind) == (code, name)
    assert message == "message for the client"


def test_errors_map_by_code_and_nothing_else():
    """One table: an error of the xlsearch family maps by its code; anything else (a library error that escaped
    its layer, a bug) is INTERNAL with a generic message — never matched by class name."""
    from PIL import UnidentifiedImageError

    from xlsearch.encode.preprocess import ImageError, PixelLimitError
    from xlsearch.index.image_index import IndexMismatchError

    assert classify(ImageError("corrupt"))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert classify(PixelLimitError("bomb"))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert classify(IndexMismatchError("x"))[0] == grpc.StatusCode.FAILED_PRECONDITION
    for escaped in (UnidentifiedImageError("/srv/secret.png"), KeyError("secret detail")):
        code, message, _ = classify(escaped)
        assert code == grpc.StatusCode.INTERNAL and "secret" not in message


# -- writes run apart from searches (issue 10, defect 5) ----------------------------------------------------------
def _add(stub: pb_grpc.ImageSearchStub, image_id: str, timeout: float = 10) -> grpc.StatusCode:
    try:
        stub.AddImages(iter([pb.AddImageRequest(image_bytes=b"png", id=image_id)]), timeout=timeout)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def test_a_slow_write_does_not_hold_the_search_threads():
    """One search thread, one write thread: while an AddImages batch takes 1.5 s, searches answer at once (before,
    adds ran on the search pool and a few of them starved every search)."""
    engine = ScriptedEngine(write_seconds=1.5)
    st = start(engine, worker_threads=1, write_threads=1)
    try:
        with st.channel() as channel, concurrent.futures.ThreadPoolExecutor(1) as pool:
            stub = pb_grpc.ImageSearchStub(channel)
            adding = pool.submit(_add, stub, "slow")
            while engine.prepares == 0:
                time.sleep(0.01)
            t0 = time.monotonic()
            assert len(stub.Search(pb.SearchRequest(query="一只猫", top_k=3), timeout=5).hits) == 3
            assert time.monotonic() - t0 < 0.5
            assert adding.result() == grpc.StatusCode.OK and "slow" in engine.ids
    finally:
        st.stop(grace=0)


def test_write_queue_limit_refuses_with_resource_exhausted():
    engine = ScriptedEngine(write_seconds=1.0)
    st = start(engine, write_threads=1, max_queued_writes=1)
    try:
        with st.channel() as channel, concurrent.futures.ThreadPoolExecutor(2) as pool:
            stub = pb_grpc.ImageSearchStub(channel)
            first = pool.submit(_add, stub, "first")
            while engine.prepares == 0:
                time.sleep(0.01)
            with pytest.raises(grpc.RpcError) as info:
                stub.AddImages(iter([pb.AddImageRequest(image_bytes=b"png", id="second")]), timeout=5)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "busy" in info.value.details()
            assert first.result() == grpc.StatusCode.OK
            assert "second" not in engine.ids
            assert _add(stub, "third") == grpc.StatusCode.OK  # the queue drained: writes are accepted again
    finally:
        st.stop(grace=0)


def test_an_idle_add_stream_is_cut_off_and_adds_nothing():
    engine = ScriptedEngine()
    st = start(engine, add_idle_timeout_seconds=0.3)

    def trickle() -> Iterator[pb.AddImageRequest]:
        yield pb.AddImageRequest(image_bytes=b"png", id="early")
        time.sleep(1.0)
        yield pb.AddImageRequest(image_bytes=b"png", id="late")

    try:
        with st.channel() as channel:
            stub = pb_grpc.ImageSearchStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.AddImages(trickle(), timeout=10)
            assert (
                info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                and "sent nothing" in info.value.details()
            )
            assert "early" not in engine.ids and "late" not in engine.ids
    finally:
        st.stop(grace=0)
