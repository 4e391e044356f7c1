"""Markdown table of the tagging experiment: mean +- std over seeds, in the COCO-CN Table IV form (+ Niu et al.)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xlsearch.training.tagging.train import K_MODES

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
                f" | {_cell([r['test_images'] for r in rows])} | "
                f"{_cell([r['training']['zh_tags'] for r in rows])} / {_cell([r['training']['en_tags'] for r in rows])} |"
            )
    return "\n".join(lines)
