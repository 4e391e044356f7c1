"""The server's edge, over a real grpc.aio server on loopback (scripted engine): concurrency limits that never lock
out health (idle AddImages streams held open), and malformed protobuf answered INVALID_ARGUMENT with one log line
and a metric instead of UNKNOWN/INTERNAL with a traceback."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_support import ScriptedEngine, ServerThread, test_settings

from xlsearch.v1 import search_pb2 as pb
from xlsearch.v1 import search_pb2_grpc as pb_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
SEARCH = "/xlsearch.v1.ImageSearch/Search"
ADD = "/xlsearch.v1.ImageSearch/AddImages"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32  # never decoded: the scripted engine takes any bytes


def start(engine: ScriptedEngine | None = None, **overrides) -> ServerThread:
    engine = engine or ScriptedEngine()
    st = ServerThread(test_settings(**overrides), engine_loader=lambda _settings: engine)
    assert st.wait_ready(timeout=10)
    return st


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def counter(st: ServerThread, name: str, **labels: str) -> float:
    return st.registry.get_sample_value(name, labels) or 0.0


@contextmanager
def idle_add_streams(st: ServerThread, channel: grpc.Channel, n: int) -> Iterator[list[grpc.Future]]:
    """`n` AddImages calls whose request streams send one image each and then stay open, idle, until the end."""
    release = threading.Event()
    stub = pb_grpc.ImageSearchStub(channel)
    held_before = st.server.limits.adds

    def requests(i: int) -> Iterator[pb.AddImageRequest]:
        yield pb.AddImageRequest(image_bytes=PNG, id=f"idle{i}")
        release.wait(30)

    calls = [stub.AddImages.future(requests(i), timeout=30) for i in range(n)]
    try:
        wait_until(lambda: st.server.limits.adds == held_before + n)
        yield calls
    finally:
        release.set()
        for call in calls:
            call.cancel()


def status(fn: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    try:
        fn()
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.fixture
def server() -> Iterator[ServerThread]:
    st = start()  # default limits: 64 calls, 4 AddImages streams
    yield st
    st.stop(grace=0)


def test_defaults_bound_add_streams_and_keep_search_and_health_answering(server: ServerThread):
    s = server.server.settings
    assert (s.max_concurrent_rpcs, s.max_concurrent_adds) == (64, 4)
    with server.channel() as channel:
        stub = pb_grpc.ImageSearchStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        with idle_add_streams(server, channel, 4):
            code, message = status(
                lambda: stub.AddImages(iter([pb.AddImageRequest(image_bytes=PNG)]), timeout=5)
            )
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_concurrent_adds" in message and "4" in message
            assert len(stub.Search(pb.SearchRequest(query="一只猫", top_k=3), timeout=5).hits) == 3
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
        # the held streams were cancelled: their slots are free again
        wait_until(lambda: server.server.limits.adds == 0 and server.server.limits.calls == 0)
        added = stub.AddImages(iter([pb.AddImageRequest(image_bytes=PNG, id="after")]), timeout=5)
        assert list(added.ids) == ["after"]
    assert counter(server, "xlsearch_errors_total", kind="TooManyAddStreams", code="RESOURCE_EXHAUSTED") == 1
    assert (
        counter(
            server,
            "xlsearch_grpc_requests_total",
            service="xlsearch.v1.ImageSearch",
            method="AddImages",
            code="RESOURCE_EXHAUSTED",
        )
        == 1
    )


def test_call_limit_refuses_work_but_never_health():
    """The old failure: with --max-concurrent-rpcs 4, four idle streams locked out Search and Health/Check."""
    st = start(max_concurrent_rpcs=4, max_concurrent_adds=10)
    try:
        with st.channel() as channel:
            stub = pb_grpc.ImageSearchStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            with idle_add_streams(st, channel, 4):
                code, message = status(lambda: stub.Search(pb.SearchRequest(query="一只猫"), timeout=5))
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "max_concurrent_rpcs" in message
                for service in ("", "xlsearch.v1.ImageSearch"):
                    assert (
                        health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
                        == SERVING
                    )
                watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=5)
                assert next(watch).status == SERVING
                watch.cancel()
            wait_until(lambda: st.server.limits.calls == 0)
            assert stub.Search(pb.SearchRequest(query="一只猫", top_k=2), timeout=5).hits
        assert counter(st, "xlsearch_errors_total", kind="TooManyCalls", code="RESOURCE_EXHAUSTED") == 1
    finally:
        st.stop(grace=0)


def test_limits_can_be_switched_off():
    st = start(max_concurrent_rpcs=None, max_concurrent_adds=None)
    try:
        with st.channel() as channel, idle_add_streams(st, channel, 6):
            stub = pb_grpc.ImageSearchStub(channel)
            assert stub.Search(pb.SearchRequest(query="一只猫", top_k=1), timeout=5).hits
    finally:
        st.stop(grace=0)


# -- malformed protobuf ---------------------------------------------------------------------------------------

GARBAGE = b"\xff\xff\xff\xff garbage"
BAD_UTF8_QUERY = b"\x0a\x02\xff\xfe"  # field 1 (query), length 2, not UTF-8


@pytest.mark.parametrize("raw", [GARBAGE, BAD_UTF8_QUERY], ids=["garbage", "invalid-utf8"])
def test_malformed_unary_requests_are_invalid_argument_with_one_log_line(
    server: ServerThread, raw: bytes, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)
    with server.channel() as channel:
        search = channel.unary_unary(SEARCH, request_serializer=None, response_deserializer=None)
        check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None)
        for call in (search, check):
            caplog.clear()
            code, message = status(lambda call=call: call(raw, timeout=5))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert message.startswith("malformed request: not a valid protobuf message")
            # the server's own records (asyncio/grpc records of earlier tests' stopped servers may be collected
            # by the garbage collector during this call and land in caplog too)
            ours = [r for r in caplog.records if r.name.startswith("xlsearch")]
            lines = [r for r in ours if "malformed" in r.getMessage()]
            assert len(lines) == 1 and not any(r.exc_info for r in ours)
            assert not any("Traceback" in r.getMessage() for r in ours)
        # the server still answers well-formed calls
        assert pb_grpc.ImageSearchStub(channel).Search(pb.SearchRequest(query="猫", top_k=1), timeout=5).hits
    assert counter(server, "xlsearch_errors_total", kind="MalformedRequest", code="INVALID_ARGUMENT") == 2
    assert (
        counter(
            server,
            "xlsearch_grpc_requests_total",
            service="xlsearch.v1.ImageSearch",
            method="Search",
            code="INVALID_ARGUMENT",
        )
        == 1
    )


def test_malformed_add_images_stream_is_invalid_argument_and_adds_nothing(caplog: pytest.LogCaptureFixture):
    engine = ScriptedEngine()
    st = start(engine)
    caplog.set_level(logging.INFO)
    try:
        before = list(engine.ids)
        with st.channel() as channel:
            add = channel.stream_unary(ADD, request_serializer=None, response_deserializer=None)
            good = pb.AddImageRequest(image_bytes=PNG, id="fine").SerializeToString()
            bad_id = (
                pb.AddImageRequest(image_bytes=PNG).SerializeToString() + b"\x12\x01\xff"
            )  # id: bad UTF-8
            for stream, n in (([GARBAGE], 0), ([good, bad_id], 1)):
                code, message = status(lambda stream=stream: add(iter(stream), timeout=5))
                assert code == grpc.StatusCode.INVALID_ARGUMENT, message
                assert message.startswith(f"malformed message {n} of the stream")
        assert engine.ids == before
        assert "Traceback" not in caplog.text
        assert counter(st, "xlsearch_errors_total", kind="MalformedRequest", code="INVALID_ARGUMENT") == 2
        assert counter(st, "xlsearch_errors_total", kind="DecodeError", code="INTERNAL") == 0
    finally:
        st.stop(grace=0)
