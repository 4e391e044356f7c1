"""What every benchmark reports with: latency summaries in milliseconds, aligned text tables, progress lines on
stderr and the JSON result file (written atomically, so a partial result of a long run is never half a file)."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.common.atomic import write_text_atomic


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """n, mean, p50, p95, p99 and max of durations given in seconds, in milliseconds (``{"n": 0}`` when empty)."""
    if not len(seconds):
        return {"n": 0}
    a = np.asarray(seconds, dtype=np.float64) * 1e3
    return {
        "n": int(len(a)),
        "mean": float(a.mean()),
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
    }


def fmt(v: Any, digits: int = 2) -> str:
    """A table cell: floats with ``digits`` decimals, None and NaN as '-'."""
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.{digits}f}"
    return str(v)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *(line(r) for r in cells[1:])])


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as indented UTF-8 JSON, written atomically (the parent folder is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def progress(msg: str) -> None:
    """A timestamped progress line on stderr (stdout carries the tables)."""
    print(f"[loadbench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
