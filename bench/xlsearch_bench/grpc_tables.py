"""The text tables of a gRPC load result: throughput and latency per configuration and client count, where the
time goes (stages, in-server wait, transport), the Prometheus view of the same levels, and the write load."""

from __future__ import annotations

from typing import Any

from xlsearch.search.types import STAGES
from xlsearch_bench.report import table


def grpc_tables(result: dict[str, Any]) -> str:
    rows = [
        [
            _label(s),
            s["concurrency"],
            s["requests"],
            s["errors"],
            s["qps"],
            s["latency_p50_ms"],
            s["latency_p95_ms"],
            s["latency_p99_ms"],
            s["server_cpu_ms_per_request"],
            s["cached_fraction"],
        ]
        for s in result["summary"]
    ]
    out = [
        f"gRPC load: {result['queries']} distinct queries, median over {result['settings']['repeat']} round(s); "
        "latency = client wall time per Search (ms)",
        table(
            [
                "config",
                "clients",
                "requests",
                "errors",
                "QPS",
                "p50",
                "p95",
                "p99",
                "server CPU/req",
                "cached",
            ],
            rows,
        ),
        "",
        "where the time goes (ms, p50 over computed requests; 'wait' = in the server outside every stage, e.g. "
        "queued for a worker thread; 'transport' = client latency - server total_seconds):",
    ]
    rows = []
    for s in result["summary"]:
        st = s["stages_p50_ms"]
        rows.append(
            [
                _label(s),
                s["concurrency"],
                *(st[x] for x in STAGES),
                s["server_wait_p50_ms"],
                s["transport_p50_ms"],
                s["server_total_p50_ms"],
                s["latency_p50_ms"],
            ]
        )
    out.append(table(["config", "clients", *STAGES, "wait", "transport", "server total", "client"], rows))
    if any(v is not None for s in result["summary"] for v in s["prometheus_mean_ms"].values()):
        out += [
            "",
            "Prometheus xlsearch_stage_seconds / grpc_request_duration (Search, OK) over each level: mean ms",
        ]
        rows = [
            [_label(s), s["concurrency"], *(s["prometheus_mean_ms"][x] for x in (*STAGES, "rpc"))]
            for s in result["summary"]
        ]
        out.append(table(["config", "clients", *STAGES, "rpc"], rows))
    writers = [s for s in result["summary"] if s.get("writers")]
    if writers:
        out += [
            "",
            f"write load: AddImages of {result['settings']['writer_images']} images, then DeleteImages",
        ]
        rows = [
            [
                s["config"],
                s["concurrency"],
                s["writers"],
                s["writer_images_per_second"],
                s["writer_add_p50_ms"],
                s["writer_errors"],
            ]
            for s in writers
        ]
        out.append(
            table(["config", "clients", "writers", "images/s added", "AddImages p50 ms", "refused"], rows)
        )
    return "\n".join(out)


def _label(summary: dict[str, Any]) -> str:
    """A summary row's config, marked when it ran under the write load."""
    w = summary.get("writers")
    return f"{summary['config']} + {w} writers" if w else summary["config"]
