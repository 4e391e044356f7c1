"""The AddImages persistence benchmark (``python -m xlsearch_bench adds``): the latency and the bytes written of
adding B images to an index of N, for the code before the change log (``--before-code-root``: every add rewrote
the index folder) and this checkout (the change log), interleaved size by size. Each side runs in its own process
(``adds_child``), so the two never share memory or a page cache warm-up order by accident."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from xlsearch_bench.machine import machine_info
from xlsearch_bench.report import progress, table

CHILD = Path(__file__).with_name("adds_child.py")


def run_adds(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work or tempfile.mkdtemp(prefix="xlsearch-adds-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    sides = [("after", "")] + ([("before", args.before_code_root)] if args.before_code_root else [])
    for size in args.sizes:
        for name, root in sides:
            cmd = [
                sys.executable,
                str(CHILD),
                "--work",
                str(work / name),
                "--sizes",
                str(size),
                "--batches",
                ",".join(str(b) for b in args.batches),
                "--repeat",
                str(args.repeat if size < 1_000_000 or name == "after" else args.repeat_1m_before),
                "--feature-dim",
                str(args.feature_dim),
                "--factory",
                args.factory,
            ] + (["--code-root", root] if root else [])
            progress(f"{name}: {size} images")
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise RuntimeError(f"{name} at {size}: {out.stderr[-2000:]}")
            for line in out.stdout.splitlines():
                if line.startswith("{"):
                    rows.append(json.loads(line))
                    progress(line)
    return {"machine": machine_info(), "rows": rows, "factory": args.factory}


def adds_tables(result: dict[str, Any]) -> str:
    rows = [r for r in result["rows"] if "batch" in r]
    body = [
        [
            r["code"],
            r["size"],
            r["batch"],
            r["repeat"],
            r["p50_ms"],
            r["p99_ms"],
            r["written_bytes_median"] / 1024,
            r["folder_growth_median"] / 1024,
            r["folder_bytes"] / 2**20,
        ]
        for r in sorted(rows, key=lambda r: (r["size"], r["batch"], r["code"]))
    ]
    snaps = [[r["size"], r["snapshot_seconds"]] for r in result["rows"] if "snapshot_seconds" in r]
    return (
        table(
            [
                "code",
                "index size",
                "images per add",
                "adds",
                "p50 ms",
                "p99 ms",
                "KiB written",
                "folder growth KiB",
                "folder MiB",
            ],
            body,
        )
        + "\n\nfull snapshot (after; in the background once the log is large):\n"
        + table(["index size", "seconds"], snaps)
    )
