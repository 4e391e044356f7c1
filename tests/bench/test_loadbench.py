"""Smoke tests of the load/scale benchmark command (`xlsearch loadbench`, `python -m xlsearch_bench`) and its
parts: tiny sizes, no timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from server_support import ScriptedEngine, ServerThread, test_settings

from xlsearch_bench.cli import main as loadbench_main
from xlsearch_bench.cli import parse_size
from xlsearch_bench.prometheus import histogram_quantile
from xlsearch_bench.queries import load_queries
from xlsearch_bench.server_process import ServerConfig
from xlsearch_bench.synthetic import Synthetic, TopK

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
    assert parse_size("real") == "real"
    assert parse_size("100k") == 100_000 and parse_size("1m") == 1_000_000 and parse_size("2500") == 2500
    cfg = ServerConfig.parse("tuned:onnx_threads=1,OMP_NUM_THREADS=1")
    assert (cfg.name, cfg.settings, cfg.env) == ("tuned", {"onnx_threads": "1"}, {"OMP_NUM_THREADS": "1"})
    assert ServerConfig.parse("default:").settings == {}
    # cumulative buckets {le: count}: 10 observations in (0, 1], 10 in (1, 2]
    assert histogram_quantile({1.0: 10, 2.0: 20, float("inf"): 20}, 0.5) == pytest.approx(1.0)
    assert histogram_quantile({1.0: 10, 2.0: 20, float("inf"): 20}, 0.75) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        load_queries()


def test_topk_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((4, 1000)).astype(np.float32)
    top = TopK(4, 10)
    for start in range(0, 1000, 300):
        top.update(scores[:, start : start + 300], start)
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    assert np.array_equal(top.rows, expected)


def test_synthetic_rows_are_seeded_normalised_and_batching_free() -> None:
    rng = np.random.default_rng(0)
    img = rng.standard_normal((30, 16)).astype(np.float32)
    cap = rng.standard_normal((30, 8)).astype(np.float32)
    gen = Synthetic(img, cap, seed=3, spread=0.5, rank=8)
    a_img, a_cap = gen.rows(0, 25_000)
    b_img, b_cap = gen.rows(9_990, 10_020)  # straddles a block boundary
    assert np.array_equal(a_img[9_990:10_020], b_img) and np.array_equal(a_cap[9_990:10_020], b_cap)
    assert np.allclose(np.linalg.norm(a_img, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(a_cap, axis=1), 1, atol=1e-5)
    again, _ = Synthetic(img, cap, seed=3, spread=0.5, rank=8).rows(0, 100)
    assert np.array_equal(again, a_img[:100])


def test_grpc_against_a_running_server(tmp_path: Path, queries_file: Path) -> None:
    server = ServerThread(test_settings(cache_ttl_seconds=0), engine_loader=lambda s: ScriptedEngine())
    try:
        assert server.wait_ready(30)
        out = tmp_path / "grpc.json"
        rc = loadbench_main(
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


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> tuple[Path, Path]:
    """(bundle, index folder): the session's tiny bundle and an index of 40 random unit vectors made for it, so
    neither this process nor the fixture runs an encoder (the commands under test run them in their own
    processes)."""
    from xlsearch.bundle.manifest import load_bundle_manifest
    from xlsearch.index.image_index import BundleKey, ImageIndex, ImageMeta

    bundle = Path(tiny_bundle)
    key = BundleKey.of(load_bundle_manifest(bundle))
    index = ImageIndex.create(key)
    rng = np.random.default_rng(0)

    def unit(n: int, d: int) -> np.ndarray:
        x = rng.standard_normal((n, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    metas = [ImageMeta(f"img{i:02d}", captions=(f"caption {i}",)) for i in range(40)]
    index.add(metas, unit(40, key.dim), unit(40, key.cl_dim))
    folder = index.save(tmp_path_factory.mktemp("loadbench") / "index")
    return bundle, folder


def test_grpc_starts_a_real_server(tiny_pair: tuple[Path, Path], tmp_path: Path, queries_file: Path) -> None:
    bundle, index = tiny_pair
    out = tmp_path / "grpc.json"
    rc = loadbench_main(
        [
            "grpc",
            "--bundle",
            str(bundle),
            "--index",
            str(index),
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


def test_scale_tiny(tiny_pair: tuple[Path, Path], tmp_path: Path, queries_file: Path) -> None:
    """`python -m xlsearch_bench scale` in its own process (one thread per library, as recommended)."""
    bundle, index = tiny_pair
    out = tmp_path / "scale.json"
    argv = [
        "scale",
        "--bundle",
        str(bundle),
        "--index",
        str(index),
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
        "--onnx-threads",
        "1",
        "--e5-threads",
        "1",
        "--search-threads",
        "1",
        "--build-threads",
        "1",
        "--out",
        str(out),
    ]
    saved = tmp_path / "indexes"
    result = _scale(argv + ["--save", str(saved)], out)
    runs = {(r["size"], r["factory"]): r for r in result["runs"]}
    assert [(size, f.split(",")[0][:3]) for size, f in runs] == [
        (size, f) for size in ("real-40", "1500") for f in ("IDM", "HNS", "IVF")
    ]
    for (size, factory), run in runs.items():
        assert "skipped" not in run, run
        for m in run["settings"]:
            assert m["queries"] == 5 and m["latency_ms"]["p50"] > 0 and m["index_ms"]["p50"] > 0
            nlist = (run["ivf_nlist"] or {}).get("images", 0)
            if factory == "IDMap,Flat" or (
                factory.startswith("IVF") and nlist <= 8
            ):  # exact / every list probed
                assert m["recall@10"] == pytest.approx(1.0), (size, factory)
    hnsw = runs[("1500", "HNSW8")]["settings"]
    assert [m["param"] for m in hnsw] == [{"ef_search": 16}, {"ef_search": 64}]

    # --reuse serves the saved index again, with the same answers
    one = (
        argv[: argv.index("--sizes")]
        + ["--sizes", "1500", "--factories", "HNSW8"]
        + argv[argv.index("--nlist-max") :]
    )
    reused = _scale(one + ["--save", str(saved), "--reuse"], tmp_path / "reused.json")["runs"][0]
    assert reused["build_seconds"] is None and "loaded from" in reused["note"]
    assert [m["recall@10"] for m in reused["settings"]] == [m["recall@10"] for m in hnsw]


def test_adds_tiny_before_and_after(tmp_path: Path) -> None:
    """`adds`: latency and bytes per AddImages at two index sizes; the change log grows by the added records alone
    (the old code's whole-folder rewrite is measured against an older checkout, docs/benchmarks.md)."""
    out = tmp_path / "adds.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "xlsearch_bench",
            "adds",
            "--sizes",
            "300",
            "3000",
            "--batches",
            "1,10",
            "--repeat",
            "3",
            "--feature-dim",
            "16",
            "--work",
            str(tmp_path / "w"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "KiB written" in proc.stdout
    rows = [r for r in json.loads(out.read_text())["rows"] if "batch" in r]
    assert {(r["size"], r["batch"]) for r in rows} == {(300, 1), (300, 10), (3000, 1), (3000, 10)}
    by = {(r["size"], r["batch"]): r for r in rows}
    for b in (
        1,
        10,
    ):  # the folder grows by the records alone, about the same at 300 and 3,000 images (ids and
        small, growth = (
            by[(300, b)]["folder_growth_median"],
            by[(3000, b)]["folder_growth_median"],
        )  # uris: +-digits)
        assert small > 0 and abs(small - growth) <= 0.02 * small
    assert by[(300, 1)]["folder_growth_median"] < 4096  # one record: its vectors, features and row


def _scale(argv: list[str], out: Path) -> dict:
    """Run `python -m xlsearch_bench scale` in its own process; returns the JSON it wrote."""
    argv = list(argv)
    argv[argv.index("--out") + 1] = str(out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "xlsearch_bench", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CLM R@10" in proc.stdout
    return json.loads(out.read_text(encoding="utf-8"))


def test_grpc_with_writers_interleaves_idle_and_loaded_levels(
    tiny_pair: tuple[Path, Path], tiny_manifest: Path, tmp_path: Path
) -> None:
    """--with-writers: each level runs idle and under AddImages+DeleteImages streams, on a copy of the index (the
    original is never written)."""
    bundle, index = tiny_pair
    before = (index / "manifest.json").read_bytes()
    out = tmp_path / "writers.json"
    argv = ["grpc", "--bundle", str(bundle), "--index", str(index), "--manifest", str(tiny_manifest)]
    argv += ["--concurrency", "1", "--requests", "15", "--with-writers", "1", "--writer-images", "4"]
    assert loadbench_main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert [(s["writers"], s["requests"], s["errors"]) for s in result["summary"]] == [(0, 15, 0), (1, 15, 0)]
    loaded = result["summary"][1]
    assert loaded["writer_images_per_second"] > 0 and loaded["writer_errors"] == 0
    assert (index / "manifest.json").read_bytes() == before


def test_safety_probe_on_a_fresh_server(tiny_pair: tuple[Path, Path], tmp_path: Path) -> None:
    """`python -m xlsearch_bench.safety`: one probe on its own server (metrics off, address-space limit, an extra
    serve argument), the peak read from /proc; the index given is copied, never written."""
    from xlsearch_bench import safety

    bundle, index = tiny_pair
    before = (index / "manifest.json").read_bytes()
    out = tmp_path / "safety.json"
    argv = ["--bundle", str(bundle), "--index", str(index), "--probes", "1", "--out", str(out)]
    assert safety.main([*argv, "--server-arg=--onnx-threads", "--server-arg=1"]) == 0
    (r,) = json.loads(out.read_text(encoding="utf-8"))["results"]
    assert r["probe"] == "Tag 1x1000 PNG" and r["status"] != "SERVER DIED" and r["rss_before_mib"] > 0
    assert (index / "manifest.json").read_bytes() == before
