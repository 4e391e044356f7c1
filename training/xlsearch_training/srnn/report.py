"""Markdown tables of ``xlsearch-train-srnn``: tagging in the form of the tagging experiment's table (P/R/F@5,
C-/I-/H-F1 at the model's own tag count, tags predicted vs the truth) and captioning in the form of the captioning
table (BLEU-1..4, ROUGE-L, CIDEr-D), mean ± std over seeds, with paired per-seed differences."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xlsearch.eval.caption_metrics import METRICS

TAG_COLUMNS = (
    ("@5", "p", "P@5"),
    ("@5", "r", "R@5"),
    ("@5", "f", "F@5"),
    ("own", "c_p", "C-P"),
    ("own", "c_r", "C-R"),
    ("own", "c_f1", "C-F1"),
    ("own", "i_p", "I-P"),
    ("own", "i_r", "I-R"),
    ("own", "i_f1", "I-F1"),
    ("own", "h_f1", "H-F1"),
)


def cell(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    v = scale * np.asarray(values, dtype=np.float64)
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}" if len(v) > 1 else f"{v.mean():.{digits}f}"


def diff_cell(diffs: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    d = scale * np.asarray(diffs, dtype=np.float64)
    wins, losses = int((d > 1e-9).sum()), int((d < -1e-9).sum())
    return f"{d.mean():+.{digits}f} ± {d.std():.{digits}f} ({wins}/{len(d) - wins - losses}/{losses})"


def tagging_table(results: Sequence[dict[str, Any]], names: Sequence[str]) -> str:
    seeds = sorted({r["seed"] for r in results})
    head = " | ".join(label for _, _, label in TAG_COLUMNS)
    lines = [
        f"Tagging on the test images that carry a vocabulary tag, mean ± std over seeds {seeds}. @5: five tags "
        "(top 5 scores; S-CNN-RNN: 5 labels decoded with the end token masked); C-/I-/H-F1 and tags at the "
        "model's own count (label-quantity prediction; S-CNN-RNN: its end token). User tags: a seeded half of "
        "each test image's true tags is given (they count as predictions when returned).",
        "",
        f"| Model | test input | {head} | tags predicted / true | val H-F1 |",
        "|---|---|" + "---|" * (len(TAG_COLUMNS) + 2),
    ]
    for name in names:
        rows = [r for r in results if r["model"] == name]
        for cond in ("no user tags", "user tags"):
            got = [r["test"][cond] for r in rows if cond in r["test"]]
            if not got:
                continue
            cells = [cell([g[block][key] for g in got]) for block, key, _ in TAG_COLUMNS]
            k = f"{cell([g['own']['mean_k'] for g in got], digits=2)} / {cell([g['true_k'] for g in got], digits=2)}"
            val = cell([r["val_h_f1"] for r in rows]) if cond == "no user tags" else "—"
            lines.append(f"| {name} | {cond} | " + " | ".join(cells) + f" | {k} | {val} |")
    return "\n".join(lines)


def paired(
    results: Sequence[dict[str, Any]], pairs: Sequence[tuple[str, str]], metric: tuple[str, str], cond: str
) -> list[str]:
    """Per-seed differences a - b of ``metric`` (block, key) for each pair, mean ± std (wins/ties/losses)."""
    by = {(r["model"], r["seed"]): r for r in results}
    out = []
    for a, b in pairs:
        seeds = sorted(s for (m, s) in by if m == a and (b, s) in by and cond in by[a, s]["test"])
        seeds = [s for s in seeds if cond in by[b, s]["test"]]
        if seeds:
            d = [
                by[a, s]["test"][cond][metric[0]][metric[1]] - by[b, s]["test"][cond][metric[0]][metric[1]]
                for s in seeds
            ]
            out.append(f"| {a} − {b} | {cond} | {diff_cell(d)} |")
    return out


def captioning_table(results: Sequence[dict[str, Any]], labels: dict[str, str]) -> str:
    seeds = sorted({r["seed"] for r in results})
    lines = [
        f"Tux Paint test splits, seeds {','.join(map(str, seeds))}: mean ± std over splits, scores x100, "
        "jieba-segmented, beam 3.",
        "",
        "| Training | " + " | ".join(METRICS) + " | exact match % | val CIDEr-D |",
        "|" + " --- |" * (len(METRICS) + 3),
    ]
    for key, label in labels.items():
        rows = [r for r in results if r["strategy"] == key]
        if not rows:
            continue
        cells = [cell([r["test"][m] for r in rows], 100, 1) for m in METRICS]
        val = cell([r["val_cider"] for r in rows], 100, 1) if all("val_cider" in r for r in rows) else "-"
        lines.append(
            f"| {label} | "
            + " | ".join(cells)
            + f" | {cell([r['exact_match'] for r in rows], 100, 1)} | {val} |"
        )
    return "\n".join(lines)


def caption_pairs(
    results: Sequence[dict[str, Any]], pairs: Sequence[tuple[str, str]], labels: dict[str, str]
) -> list[str]:
    by = {(r["strategy"], r["seed"]): r for r in results}
    out = []
    for a, b in pairs:
        seeds = sorted(s for (m, s) in by if m == a and (b, s) in by)
        if seeds:
            d = [by[a, s]["test"]["CIDEr-D"] - by[b, s]["test"]["CIDEr-D"] for s in seeds]
            dv = [by[a, s].get("val_cider", np.nan) - by[b, s].get("val_cider", np.nan) for s in seeds]
            val = diff_cell(dv, 100, 1) if not np.isnan(dv).any() else "—"
            out.append(f"| {labels.get(a, a)} − {labels.get(b, b)} | {diff_cell(d, 100, 1)} | {val} |")
    return out
