"""Prometheus metrics: own registry per server (no globals), served on their own port, per-RPC series from the
interceptor, per-stage histograms, cache counters, index gauges and build info."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from server_support import ScriptedEngine, ServerThread, test_settings

from xlsearch.v1 import search_pb2 as pb
from xlsearch.v1 import search_pb2_grpc as pb_grpc
from xlsearch_server.metrics import STAGES, MetricsEndpoint, ServerMetrics


def scrape(port: int) -> dict[str, list]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(samples: list, name: str, **labels: str) -> float:
    for s in samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {name}{labels}")


def test_each_server_metrics_object_has_its_own_registry():
    a, b = ServerMetrics(CollectorRegistry()), ServerMetrics(CollectorRegistry())  # no duplicate-name error
    a.errors.labels("InvalidQuery", "INVALID_ARGUMENT").inc()
    assert a.registry.get_sample_value(
        "xlsearch_errors_total", {"kind": "InvalidQuery", "code": "INVALID_ARGUMENT"}
    )
    assert (
        b.registry.get_sample_value(
            "xlsearch_errors_total", {"kind": "InvalidQuery", "code": "INVALID_ARGUMENT"}
        )
        is None
    )


def test_endpoint_serves_only_its_registry_on_its_own_port():
    metrics = ServerMetrics(CollectorRegistry())
    metrics.set_index(images=12, captions=9, version=4)
    endpoint = MetricsEndpoint(metrics.registry, "127.0.0.1", 0)
    port = endpoint.start()
    try:
        families = scrape(port)
        assert value(families["xlsearch_index_images"], "xlsearch_index_images") == 12
        assert value(families["xlsearch_index_version"], "xlsearch_index_version") == 4
        assert "python_gc_objects_collected" not in families  # the default registry is not exported
        for stage in STAGES:  # present from the start, before any search
            assert value(families["xlsearch_stage_seconds"], "xlsearch_stage_seconds_count", stage=stage) == 0
    finally:
        endpoint.stop()


@pytest.fixture
def server():
    st = ServerThread(test_settings(), engine_loader=lambda s: ScriptedEngine())
    assert st.wait_ready(10)
    yield st
    st.stop()


def test_rpc_stage_cache_index_and_build_series_are_exported(server: ServerThread):
    with server.channel() as channel:
        stub = pb_grpc.ImageSearchStub(channel)
        for _ in range(2):
            stub.Search(pb.SearchRequest(query="一只猫", top_k=3), timeout=5)
        with pytest.raises(grpc.RpcError):
            stub.Search(pb.SearchRequest(query=""), timeout=5)
        stub.AddImages(iter([pb.AddImageRequest(image_bytes=b"img", id="x")]), timeout=5)

    f = scrape(server.server.metrics_port)
    rpc = {"service": "xlsearch.v1.ImageSearch", "method": "Search"}
    assert value(f["xlsearch_grpc_requests"], "xlsearch_grpc_requests_total", code="OK", **rpc) == 2
    assert (
        value(f["xlsearch_grpc_requests"], "xlsearch_grpc_requests_total", code="INVALID_ARGUMENT", **rpc)
        == 1
    )
    latency = f["xlsearch_grpc_request_duration_seconds"]
    assert value(latency, "xlsearch_grpc_request_duration_seconds_count", code="OK", **rpc) == 2
    assert value(latency, "xlsearch_grpc_request_duration_seconds_bucket", code="OK", le="+Inf", **rpc) == 2
    assert value(f["xlsearch_grpc_requests_in_flight"], "xlsearch_grpc_requests_in_flight", **rpc) == 0
    for stage in STAGES:  # the first search computed, the second came from the cache
        assert value(f["xlsearch_stage_seconds"], "xlsearch_stage_seconds_count", stage=stage) == 1
    assert value(f["xlsearch_cache_hits"], "xlsearch_cache_hits_total", cache="result") == 1
    assert value(f["xlsearch_cache_misses"], "xlsearch_cache_misses_total", cache="result") == 1
    assert value(f["xlsearch_cache_up"], "xlsearch_cache_up", backend="memory") == 1
    assert (
        value(f["xlsearch_errors"], "xlsearch_errors_total", kind="InvalidQuery", code="INVALID_ARGUMENT")
        == 1
    )
    assert value(f["xlsearch_index_images"], "xlsearch_index_images") == 21
    assert value(f["xlsearch_index_version"], "xlsearch_index_version") == 2
    assert value(f["xlsearch_images_added"], "xlsearch_images_added_total") == 1
    assert value(f["xlsearch_ready"], "xlsearch_ready") == 1
    info = value(f["xlsearch_build_info"], "xlsearch_build_info", version="0.1.0", bundle_hash="b" * 64)
    assert info == 1


def test_metrics_port_can_be_disabled():
    st = ServerThread(test_settings(metrics_port=None), engine_loader=lambda s: ScriptedEngine())
    try:
        assert st.wait_ready(10) and st.server.metrics_port is None
    finally:
        st.stop()
