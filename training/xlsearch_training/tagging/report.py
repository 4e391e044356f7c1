"""Markdown table of the tagging experiment: mean +- std over seeds, in the COCO-CN Table IV form (+ Niu et al.)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xlsearch_training.tagging.evaluate import K_MODES

COLUMNS = (
    ("p", "P"),
    ("r", "R"),
    ("f", "F"),
    ("c_p", "C-P"),
    ("c_r", "C-R"),
    ("c_f1", "C-F1"),
    ("i_p", "I-P"),
    ("i_r", "I-R"),
    ("i_f1", "I-F1"),
    ("h_f1", "H-F1"),
    ("mean_k", "mean k"),
)


def _cell(values: Sequence[float]) -> str:
    v = np.asarray(values, dtype=np.float64)
    return f"{v.mean():.3f} ± {v.std():.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def _count(values: Sequence[float]) -> str:
    v = np.asarray(values, dtype=np.float64)
    return f"{v.mean():.1f} ± {v.std():.1f}" if len(v) > 1 else f"{v.mean():.0f}"


def format_table(results: Sequence[dict[str, Any]], models: Sequence[str]) -> str:
    seeds = sorted({r["seed"] for r in results})
    lines = [
        f"Tagging on the test images that carry a vocabulary tag, mean ± std over seeds {seeds}. "
        "P/R/F: per image, averaged; C-: per class; I-: pooled over images; H-F1: harmonic mean of C-F1 and I-F1.",
        "",
        "| Model | k | " + " | ".join(name for _, name in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for model in models:
        rows = [r for r in results if r["model"] == model]
        if not rows:
            continue
        mean_ks = sorted({r["fixed_mean_k"] for r in rows})
        for mode in K_MODES:
            label = f"k = mean ({'/'.join(map(str, mean_ks))})" if mode == "k=mean" else mode
            cells = [_cell([r[mode][key] for r in rows]) for key, _ in COLUMNS]
            lines.append(f"| {model} | {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| Model | LQP accuracy | LQP MSE | test images | vocabulary (zh / en) |",
        "|---|---|---|---|---|",
    ]
    for model in models:
        rows = [r for r in results if r["model"] == model]
        if rows:
            lines.append(
                f"| {model} | {_cell([r['lqp']['accuracy'] for r in rows])} | {_cell([r['lqp']['mse'] for r in rows])}"
                f" | {_count([r['test_images'] for r in rows])} | "
                f"{_count([r['training']['zh_tags'] for r in rows])} / {_count([r['training']['en_tags'] for r in rows])} |"
            )
    lines += ["", *paired_differences(results, models)]
    return "\n".join(lines)


def _diff_cell(diffs: Sequence[float]) -> str:
    d = np.asarray(diffs, dtype=np.float64)
    wins, losses = int((d > 1e-9).sum()), int((d < -1e-9).sum())
    return f"{d.mean():+.3f} ± {d.std():.3f} ({wins}/{len(d) - wins - losses}/{losses})"


def paired_differences(results: Sequence[dict[str, Any]], models: Sequence[str]) -> list[str]:
    """Per-seed differences (mean ± std, wins/ties/losses over seeds): each model's F@5 minus the first model's,
    and I-F1 with LQP minus I-F1 with the fixed mean k."""
    by = {(r["model"], r["seed"]): r for r in results}
    seeds = sorted({r["seed"] for r in results})
    lines = [
        f"Paired per-seed differences (mean ± std, wins/ties/losses): F@5 vs {models[0]}; "
        "I-F1 of LQP vs fixed k = mean.",
        "",
        f"| Model | F@5 − {models[0]} | I-F1 (LQP) − I-F1 (k = mean) |",
        "|---|---|---|",
    ]
    for model in models:
        common = [s for s in seeds if (model, s) in by and (models[0], s) in by]
        if not common:
            continue
        f5 = [by[model, s]["k=5"]["f"] - by[models[0], s]["k=5"]["f"] for s in common]
        lqp = [by[model, s]["LQP"]["i_f1"] - by[model, s]["k=mean"]["i_f1"] for s in common]
        first = "—" if model == models[0] else _diff_cell(f5)
        lines.append(f"| {model} | {first} | {_diff_cell(lqp)} |")
    return lines
