"""Benchmark tables (Markdown) from per-seed result dicts of `xlsearch.eval.benchmark.evaluate`."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from xlsearch.eval.metrics import mean_std

ROW_LABELS = {
    "CL[sentence]": "CL, e5 zero-shot (peer baseline)",
    "CL[visual]": "CL, W2VV visual space",
    "CM": "CM",
    "CM i2t": "CM image-to-text (zh sentences)",
    "CLM[visual]": "CLM, CL in visual space",
    "CLM[sentence]": "CLM, CL in e5 space",
    "CLM served": "CLM served (CL space + alpha chosen on validation)",
    "CM all images": "CM, all images as candidates",
    "CM i2i (same caption)": "CM image-to-image (same caption relevant, all images)",
    "CL[sentence] en queries": "CL e5, English queries",
    "CL[visual] en queries": "CL visual, English queries",
    "CM en queries": "CM, English queries",
    "CLM[visual] en queries": "CLM visual, English queries",
    "CLM[sentence] en queries": "CLM e5, English queries",
    "CLM[visual] all images": "CLM visual, all images as candidates",
    "CLM[sentence] all images": "CLM e5, all images as candidates",
}


def _pm(values: list[float]) -> str:
    m, s = mean_std(values)
    return f"{m:.3f} ± {s:.3f}"


def run_label(result: dict[str, Any]) -> str:
    """A result's row name: its variant, marked when it was trained on the manifest's own split."""
    return result["variant"] + (" (manifest split)" if result.get("split") == "manifest" else "")


def _by_variant(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        out[run_label(r)].append(r)
    return out


def variants_table(results: list[dict[str, Any]]) -> str:
    """The paper's Table X form: MRR per matching approach and model, mean ± std over seeds."""
    cols = ["CL[visual]", "CM", "CLM[visual]", "CLM[sentence]"]
    head = "| Model | CL (visual) | CM | CLM (CL visual) | CLM (CL e5) | seeds |"
    lines = [head, "|" + "---|" * 6]
    for name, runs in _by_variant(results).items():
        cells = [
            _pm([r["rows"][c]["mrr"] for r in runs if c in r["rows"]]) if c in runs[0]["rows"] else "—"
            for c in cols
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(runs)} |")
    return "\n".join(lines)


def detail_table(runs: list[dict[str, Any]]) -> str:
    """Every row of one variant with MRR and R@K, mean ± std over seeds."""
    lines = ["| Matching | MRR | R@1 | R@5 | R@10 | alpha |", "|---|---|---|---|---|---|"]
    for key, label in ROW_LABELS.items():
        # runs benchmarked before a row existed lack it: average the row over the runs that have it
        rows = [r["rows"][key] for r in runs if key in r["rows"]]
        if not rows:
            continue
        if len(rows) < len(runs):
            label = f"{label} ({len(rows)} of {len(runs)} seeds)"
        alpha = _pm([x["alpha"] for x in rows]) if "alpha" in rows[0] else ""
        cells = [_pm([x[m] for x in rows]) for m in ("mrr", "r@1", "r@5", "r@10")]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {alpha} |")
    return "\n".join(lines)


def format_results(results: list[dict[str, Any]], served: str | None = None) -> str:
    if not results:
        return "(no results)"
    groups = _by_variant(results)
    if served in groups:
        shown, heading = served, f"Served configuration: {served}"
    else:  # never call another variant the served one
        shown = next(iter(groups))
        missing = f" (the served configuration, {served}, is not among these results)" if served else ""
        heading = f"Detail: {shown}{missing}"
    runs = groups[shown]
    seeds = ",".join(str(r["seed"]) for r in runs)
    parts = [
        f"MRR on the test split, mean ± std over seeds {seeds} "
        f"({runs[0]['queries']} queries, {runs[0]['candidates']} candidates per split; "
        f"{runs[0]['candidates_all']} with all images)",
        "",
        variants_table(results),
        "",
        heading,
        "",
        detail_table(runs),
    ]
    return "\n".join(parts)
