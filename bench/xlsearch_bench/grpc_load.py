"""The gRPC load benchmark (``xlsearch loadbench grpc``): N concurrent clients (threads, one channel each) against a
real server, level by level; per level QPS, latency percentiles, the per-stage timings each SearchResponse
carries, the server's Prometheus histograms, the server's CPU time per request; optionally every level again
under a write load (``writers.WriterLoad``). Several server configurations run interleaved over ``--repeat``
rounds; the summary is the median over rounds."""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xlsearch.search.types import STAGES
from xlsearch_bench.machine import machine_info, proc_status, process_cpu_seconds
from xlsearch_bench.prometheus import scrape, stage_metrics
from xlsearch_bench.queries import load_queries
from xlsearch_bench.report import fmt, progress, summary_ms
from xlsearch_bench.server_process import ServerConfig, ServerProcess, wait_serving
from xlsearch_bench.writers import WriterLoad, writer_images


@dataclass
class Sample:
    latency: float  # client wall time of the call (seconds)
    code: str
    server_total: float = 0.0  # SearchResponse.total_seconds
    timings: dict[str, float] = field(default_factory=dict)
    cached: bool = False


def _search_once(stub: Any, pb: Any, query: str, top_k: int, mode: int, timeout: float) -> Sample:
    import grpc

    t0 = time.perf_counter()
    try:
        resp = stub.Search(pb.SearchRequest(query=query, top_k=top_k, mode=mode), timeout=timeout)
    except grpc.RpcError as e:
        return Sample(time.perf_counter() - t0, e.code().name)
    return Sample(
        time.perf_counter() - t0,
        "OK",
        resp.total_seconds,
        {t.stage: t.seconds for t in resp.timings},
        resp.cached,
    )


def run_level(
    target: str,
    queries: list[str],
    concurrency: int,
    requests: int,
    duration: float,
    warmup: int = 2,
    top_k: int = 10,
    mode: str = "CLM",
    rpc_timeout: float = 30.0,
    metrics_url: str | None = None,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """``concurrency`` client threads (one channel each) send ``requests`` Searches each (fewer if ``duration``
    seconds pass first), after ``warmup`` unrecorded calls each. Returns the level's statistics."""
    import grpc

    from xlsearch.v1 import search_pb2 as pb
    from xlsearch.v1 import search_pb2_grpc as pb_grpc

    mode_value = pb.MatchMode.Value(mode)
    ready, go = threading.Barrier(concurrency + 1), threading.Barrier(concurrency + 1)
    samples: list[list[Sample]] = [[] for _ in range(concurrency)]
    failures: list[BaseException] = []
    stop_at = [math.inf]

    def client(i: int) -> None:
        n = len(queries)
        pos = (i * n) // concurrency
        try:
            with grpc.insecure_channel(target) as channel:
                stub = pb_grpc.ImageSearchStub(channel)
                try:
                    for w in range(warmup):
                        _search_once(stub, pb, queries[(pos + w) % n], top_k, mode_value, rpc_timeout)
                finally:
                    ready.wait()
                go.wait()
                for j in range(requests):
                    if time.monotonic() >= stop_at[0]:
                        break
                    q = queries[(pos + warmup + j) % n]
                    samples[i].append(_search_once(stub, pb, q, top_k, mode_value, rpc_timeout))
        except threading.BrokenBarrierError:
            pass
        except BaseException as e:  # noqa: BLE001 - reported after the level
            failures.append(e)
            ready.abort()
            go.abort()

    threads = [
        threading.Thread(target=client, args=(i,), name=f"loadbench-client-{i}") for i in range(concurrency)
    ]
    for t in threads:
        t.start()
    try:
        ready.wait()
        before = scrape(metrics_url)
        cpu0 = process_cpu_seconds(server_pid) if server_pid else None
        client_cpu0 = time.process_time()
        stop_at[0] = time.monotonic() + duration
        t0 = time.perf_counter()
        go.wait()
    except threading.BrokenBarrierError:
        for t in threads:
            t.join()
        raise RuntimeError(f"client failed: {failures[0]!r}") from (failures[0] if failures else None)
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    client_cpu = time.process_time() - client_cpu0
    cpu1 = process_cpu_seconds(server_pid) if server_pid else None
    after = scrape(metrics_url)
    if failures:
        raise RuntimeError(f"client failed: {failures[0]!r}") from failures[0]
    stats = level_stats(
        [s for per in samples for s in per],
        wall,
        concurrency,
        server_cpu=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        client_cpu=client_cpu,
        metrics=stage_metrics(before, after) if before and after else None,
    )
    if server_pid:
        try:
            stats["server_rss_mb"] = proc_status(server_pid).get("VmRSS", 0) / (1 << 20)
        except OSError:
            pass
    return stats


def level_stats(
    samples: list[Sample],
    wall: float,
    concurrency: int,
    server_cpu: float | None = None,
    client_cpu: float | None = None,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    ok = [s for s in samples if s.code == "OK"]
    errors: dict[str, int] = {}
    for s in samples:
        if s.code != "OK":
            errors[s.code] = errors.get(s.code, 0) + 1
    computed = [s for s in ok if not s.cached]
    stages = {st: summary_ms([s.timings.get(st, 0.0) for s in computed]) for st in STAGES}
    # Server time outside every stage: waiting for a worker thread, cache lookups, event loop, conversions.
    wait = summary_ms([max(0.0, s.server_total - sum(s.timings.values())) for s in computed])
    transport = summary_ms([max(0.0, s.latency - s.server_total) for s in ok])
    return {
        "concurrency": concurrency,
        "requests": len(samples),
        "ok": len(ok),
        "errors": errors,
        "seconds": wall,
        "qps": len(ok) / wall if wall > 0 else 0.0,
        "latency_ms": summary_ms([s.latency for s in ok]),
        "server_total_ms": summary_ms([s.server_total for s in ok]),
        "stages_ms": stages,
        "server_wait_ms": wait,
        "transport_ms": transport,
        "cached_fraction": (len(ok) - len(computed)) / len(ok) if ok else 0.0,
        "server_cpu_ms_per_request": 1e3 * server_cpu / len(ok) if server_cpu is not None and ok else None,
        "client_cpu_ms_per_request": 1e3 * client_cpu / len(ok) if client_cpu is not None and ok else None,
        "prometheus": metrics,
        "loadavg": list(os.getloadavg()),
    }


def _median_of(levels: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for lv in levels:
        v: Any = lv
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        if isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v)):
            values.append(float(v))
    return statistics.median(values) if values else None


def summarize_levels(levels: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over repeated rounds of one (configuration, concurrency)."""
    out: dict[str, Any] = {
        "rounds": len(levels),
        "requests": sum(lv["requests"] for lv in levels),
        "errors": sum(sum(lv["errors"].values()) for lv in levels),
        "qps": _median_of(levels, "qps"),
        "qps_all_rounds": [lv["qps"] for lv in levels],
        "cached_fraction": _median_of(levels, "cached_fraction"),
        "server_cpu_ms_per_request": _median_of(levels, "server_cpu_ms_per_request"),
        "client_cpu_ms_per_request": _median_of(levels, "client_cpu_ms_per_request"),
        "server_rss_mb": _median_of(levels, "server_rss_mb"),
    }
    for q in ("p50", "p95", "p99", "mean"):
        out[f"latency_{q}_ms"] = _median_of(levels, "latency_ms", q)
        out[f"server_total_{q}_ms"] = _median_of(levels, "server_total_ms", q)
    out["stages_p50_ms"] = {st: _median_of(levels, "stages_ms", st, "p50") for st in STAGES}
    out["stages_mean_ms"] = {st: _median_of(levels, "stages_ms", st, "mean") for st in STAGES}
    out["server_wait_p50_ms"] = _median_of(levels, "server_wait_ms", "p50")
    out["server_wait_mean_ms"] = _median_of(levels, "server_wait_ms", "mean")
    out["transport_p50_ms"] = _median_of(levels, "transport_ms", "p50")
    out["transport_mean_ms"] = _median_of(levels, "transport_ms", "mean")
    out["prometheus_mean_ms"] = {
        st: _median_of(levels, "prometheus", st, "mean_ms") for st in (*STAGES, "rpc")
    }
    out["prometheus_p95_ms"] = {st: _median_of(levels, "prometheus", st, "p95_ms") for st in (*STAGES, "rpc")}
    return out


def summarize_write_load(levels: list[dict[str, Any]]) -> dict[str, Any]:
    """The write load's figures of the levels of one (configuration, concurrency) run under writers."""
    loads = [lv["write_load"] for lv in levels]
    return {
        "writer_images_per_second": statistics.median(x["images_per_second"] for x in loads),
        "writer_add_p50_ms": _median_of(loads, "add_latency_ms", "p50"),
        "writer_errors": sum(sum(x["errors"].values()) for x in loads),
    }


def run_grpc(args: argparse.Namespace) -> dict[str, Any]:
    queries = load_queries(args.manifest, args.queries_file, args.queries, args.seed)
    configs = args.server_config or [ServerConfig("default")]
    servers: list[tuple[ServerConfig, str, str | None, int | None]] = []
    started: list[ServerProcess] = []
    workdir = Path(tempfile.mkdtemp(prefix="xlsearch-loadbench-"))
    result: dict[str, Any] = {
        "mode": "grpc",
        "machine": machine_info(),
        "queries": len(queries),
        "settings": {
            "concurrency": args.concurrency,
            "requests_per_client": args.requests,
            "max_seconds_per_level": args.duration,
            "warmup_per_client": args.warmup,
            "repeat": args.repeat,
            "top_k": args.top_k,
            "mode": args.search_mode,
            "cache_ttl_seconds": args.cache_ttl_seconds,
            "target": args.target,
            "with_writers": args.with_writers,
            "writer_images": args.writer_images,
        },
        "configs": [asdict(c) for c in configs],
        "levels": [],
    }
    try:
        if args.target:
            if not wait_serving(args.target, args.start_timeout):
                raise RuntimeError(f"{args.target} is not SERVING")
            servers.append((ServerConfig("target"), args.target, args.metrics_url, None))
            result["configs"] = [asdict(ServerConfig("target"))]
        else:
            for cfg in configs:
                index = Path(args.index)
                if args.with_writers:  # writers change the index: serve a copy
                    index = workdir / f"index-{len(started)}"
                    shutil.copytree(args.index, index)
                sp = ServerProcess(Path(args.bundle), index, cfg, workdir, args.cache_ttl_seconds)
                progress(f"starting server {cfg.name}: {' '.join(sp.argv()[1:])} {cfg.env or ''}")
                sp.start(args.start_timeout)
                started.append(sp)
                servers.append((cfg, sp.target, sp.metrics_url, sp.proc.pid if sp.proc else None))
        writer_counts = [0, args.with_writers] if args.with_writers else [0]
        images = writer_images(args.manifest) if args.with_writers else []
        for rnd in range(args.repeat):
            for cfg, target, metrics_url, pid in servers:
                for c in args.concurrency:
                    for w in writer_counts:  # interleaved: idle and loaded levels share the machine's state
                        load = (
                            WriterLoad(target, images, w, args.writer_images, tag=f"r{rnd}c{c}w")
                            if w
                            else None
                        )
                        if load is not None:
                            load.start()
                            time.sleep(1.0)  # let the first AddImages calls start
                        lv = run_level(
                            target,
                            queries,
                            c,
                            args.requests,
                            args.duration,
                            args.warmup,
                            args.top_k,
                            args.search_mode,
                            args.rpc_timeout,
                            metrics_url,
                            pid,
                        )
                        lv.update(config=cfg.name, round=rnd, writers=w)
                        if load is not None:
                            lv["write_load"] = wl = load.stop()
                            wl["add_latency_ms"] = summary_ms(wl.pop("add_seconds"))
                        result["levels"].append(lv)
                        lat = lv["latency_ms"]
                        progress(
                            f"round {rnd} {cfg.name} c={c} writers={w}: {lv['ok']}/{lv['requests']} ok, "
                            f"{lv['qps']:.1f} QPS, p50 {fmt(lat.get('p50'))} p99 {fmt(lat.get('p99'))} ms, "
                            f"load {lv['loadavg'][0]:.2f}"
                        )
    finally:
        for sp in started:
            sp.stop()
    result["summary"] = []
    for cfg, *_ in servers:
        for c in args.concurrency:
            for w in writer_counts:
                levels = [
                    lv
                    for lv in result["levels"]
                    if lv["config"] == cfg.name and lv["concurrency"] == c and lv.get("writers", 0) == w
                ]
                row = {"config": cfg.name, "concurrency": c, "writers": w, **summarize_levels(levels)}
                if w:
                    row.update(summarize_write_load(levels))
                result["summary"].append(row)
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    return result
