"""Smoke tests of the load/scale benchmark command (`xlsearch.loadbench`): tiny sizes, no timing assertions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from server_support import ScriptedEngine, ServerThread, session_pair, test_settings

from xlsearch import loadbench as lb

QUERIES = [
    "一只猫",
    "红色的汽车",
    "一朵花。",
    "青蛙",
    "一只鸟在飞",
    "hello",
]  # the last has no Chinese: dropped


@pytest.fixture
def queries_file(tmp_path: Path) -> Path:
    path = tmp_path / "queries.txt"
    path.write_text("\n".join(QUERIES) + "\n", encoding="utf-8")
    return path


def test_helpers() -> None:
    assert lb.parse_size("real") == "real"
    assert (
        lb.parse_size("100k") == 100_000
        and lb.parse_size("1m") == 1_000_000
        and lb.parse_size("2500") == 2500
    )
    cfg = lb.ServerConfig.parse("tuned:onnx_threads=1,OMP_NUM_THREADS=1")
    assert (cfg.name, cfg.settings, cfg.env) == ("tuned", {"onnx_threads": "1"}, {"OMP_NUM_THREADS": "1"})
    assert lb.ServerConfig.parse("default:").settings == {}
    # cumulative buckets {le: count}: 10 observations in (0, 1], 10 in (1, 2]
    assert lb.histogram_quantile({1.0: 10, 2.0: 20, float("inf"): 20}, 0.5) == pytest.approx(1.0)
    assert lb.histogram_quantile({1.0: 10, 2.0: 20, float("inf"): 20}, 0.75) == pytest.approx(1.5)
    assert lb.load_queries(queries_file=None, manifest=None) if False else True
    with pytest.raises(ValueError):
        lb.load_queries()


def test_topk_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((4, 1000)).astype(np.float32)
    top = lb.TopK(4, 10)
    for start in range(0, 1000, 300):
        top.update(scores[:, start : start + 300], start)
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    assert np.array_equal(top.rows, expected)


def test_synthetic_rows_are_seeded_normalised_and_batching_free() -> None:
    rng = np.random.default_rng(0)
    img = rng.standard_normal((30, 16)).astype(np.float32)
    cap = rng.standard_normal((30, 8)).astype(np.float32)
    gen = lb.Synthetic(img, cap, seed=3, spread=0.5, rank=8)
    a_img, a_cap = gen.rows(0, 25_000)
    b_img, b_cap = gen.rows(9_990, 10_020)  # straddles a block boundary
    assert np.array_equal(a_img[9_990:10_020], b_img) and np.array_equal(a_cap[9_990:10_020], b_cap)
    assert np.allclose(np.linalg.norm(a_img, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(a_cap, axis=1), 1, atol=1e-5)
    again, _ = lb.Synthetic(img, cap, seed=3, spread=0.5, rank=8).rows(0, 100)
    assert np.array_equal(again, a_img[:100])


def test_grpc_against_a_running_server(tmp_path: Path, queries_file: Path) -> None:
    server = ServerThread(test_settings(cache_ttl_seconds=0), engine_loader=lambda s: ScriptedEngine())
    try:
        assert server.wait_ready(30)
        out = tmp_path / "grpc.json"
        rc = lb.main(
            [
                "grpc",
                "--target",
                server.address,
                "--metrics-url",
                f"http://127.0.0.1:{server.server.metrics_port}/metrics",
                "--queries-file",
                str(queries_file),
                "--concurrency",
                "1,3",
                "--requests",
                "4",
                "--duration",
                "10",
                "--repeat",
                "2",
                "--out",
                str(out),
            ]
        )
    finally:
        server.stop()
    assert rc == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["queries"] == 5
    assert [(s["concurrency"], s["requests"], s["errors"]) for s in result["summary"]] == [
        (1, 8, 0),
        (3, 24, 0),
    ]
    for s in result["summary"]:
        assert s["qps"] > 0 and s["latency_p50_ms"] > 0
        assert s["stages_p50_ms"]["encode"] == pytest.approx(
            1.0
        )  # the scripted engine reports 1 ms per stage
        assert s["prometheus_mean_ms"]["search"] == pytest.approx(1.0)
        assert s["prometheus_mean_ms"]["rpc"] > 0


def test_grpc_starts_a_real_server(
    request: pytest.FixtureRequest, tmp_path_factory, tmp_path, queries_file
) -> None:
    pair = session_pair(request, tmp_path_factory)
    out = tmp_path / "grpc.json"
    rc = lb.main(
        [
            "grpc",
            "--bundle",
            str(pair.bundle),
            "--index",
            str(pair.index),
            "--queries-file",
            str(queries_file),
            "--concurrency",
            "1,2",
            "--requests",
            "3",
            "--server-config",
            "tuned:onnx_threads=1,worker_threads=1,OMP_NUM_THREADS=1",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert [(s["config"], s["requests"], s["errors"]) for s in result["summary"]] == [
        ("tuned", 3, 0),
        ("tuned", 6, 0),
    ]
    s = result["summary"][0]
    assert s["stages_p50_ms"]["encode"] > 0 and s["server_cpu_ms_per_request"] is not None
    assert s["prometheus_mean_ms"]["encode"] > 0


def test_scale_tiny(request: pytest.FixtureRequest, tmp_path_factory, tmp_path, queries_file) -> None:
    pair = session_pair(request, tmp_path_factory)
    out = tmp_path / "scale.json"
    rc = lb.main(
        [
            "scale",
            "--bundle",
            str(pair.bundle),
            "--index",
            str(pair.index),
            "--queries-file",
            str(queries_file),
            "--sizes",
            "real",
            "1500",
            "--factories",
            "IDMap,Flat",
            "HNSW8",
            "IVF{nlist},Flat",
            "--nlist-max",
            "8",
            "--ef-search",
            "16,64",
            "--nprobe",
            "8",
            "--chunk",
            "500",
            "--train-rows",
            "500",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    runs = {(r["size"], r["factory"]): r for r in result["runs"]}
    n_real = result["real"]["images"]
    assert set(runs) == {
        (size, f) for size in (f"real-{n_real}", "1500") for f in ("IDMap,Flat", "HNSW8", "IVF8,Flat")
    }
    for (size, factory), run in runs.items():
        assert "skipped" not in run, run
        for m in run["settings"]:
            assert m["queries"] == 5 and m["latency_ms"]["p50"] > 0
            if factory == "IDMap,Flat" or factory == "IVF8,Flat":  # exact, or IVF with every list probed
                assert m["recall@10"] == pytest.approx(1.0), (size, factory)
    assert [m["param"] for m in runs[("1500", "HNSW8")]["settings"]] == [{"ef_search": 16}, {"ef_search": 64}]
