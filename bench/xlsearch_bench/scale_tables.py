"""The text table of a scale result: per size, factory and search parameter, build time, memory, latency (whole
search and the index part), threshold rounds and recall@k of the fused CLM ranking and of each table alone."""

from __future__ import annotations

from typing import Any

from xlsearch_bench.report import table


def scale_tables(result: dict[str, Any]) -> str:
    k = result["settings"]["top_k"]
    rows = []
    for run in result["runs"]:
        if "skipped" in run:
            rows.append([run["size"], run["factory"], "skipped: " + run["skipped"][:60]] + [None] * 10)
            continue
        for m in run["settings"]:
            p = ",".join(f"{a}={b}" for a, b in m["param"].items()) or "-"
            lat = m["latency_ms"]
            rows.append(
                [
                    run["size"],
                    run["factory"],
                    p,
                    run["build_seconds"],
                    run["rss_delta_mb"],
                    lat.get("p50"),
                    lat.get("p99"),
                    m["index_ms"].get("p50"),
                    m["index_ms"].get("p99"),
                    m["stages_p50_ms"]["encode"],
                    m["rounds_mean"],
                    m[f"recall@{k}"],
                    m[f"images_recall@{k}"],
                    m[f"captions_recall@{k}"],
                ]
            )
    head = [
        "size",
        "factory",
        "param",
        "build s",
        "RSS MiB",
        "p50 ms",
        "p99 ms",
        "index p50",
        "index p99",
        "encode p50",
        "rounds",
        f"CLM R@{k}",
        f"img R@{k}",
        f"cap R@{k}",
    ]
    s = result["synthetic"]
    return "\n".join(
        [
            f"scale: single client, engine.search(query, top_k={k}, 'CLM'), alpha={result['settings']['alpha']}; "
            f"{result['settings']['queries']} real queries; recall vs brute force over all vectors; "
            "'index' = search + fuse + metadata stages (the part that depends on the index)",
            f"synthetic rows: Gaussian mixture around {s['components']} real pairs, spread {s['spread']}, "
            f"rank {s['rank']} ({100 * s['variance_explained_by_rank']:.0f}% of the variance), seed {s['seed']}",
            table(head, rows),
        ]
    )
