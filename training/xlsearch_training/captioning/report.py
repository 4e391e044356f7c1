"""Markdown table of the captioning experiment: mean +- std over seeds per strategy and the NN baseline, with what
the test split asks of a generator."""

from __future__ import annotations

from typing import Any

import numpy as np

from xlsearch.eval.caption_metrics import METRICS

NN = "nn"
LABELS = {
    "monolingual": "Monolingual (zh only)",
    "transfer": "Transfer (en W_im -> zh)",
    "sequential": "Sequential Learning (zh_TW->s, then zh_CN)",
    "tags": "Captioning with tags",
    NN: "NN sentence recommendation (top-1)",
}


def _fmt(values: list[float]) -> str:
    arr = 100 * np.asarray(values)
    return f"{arr.mean():.1f} ± {arr.std():.1f}" if len(arr) > 1 else f"{arr.mean():.1f}"


def format_table(results: list[dict[str, Any]], strategies: list[str], dataset: str) -> str:
    """``dataset``: the name the heading gives the data (e.g. the --data folder's name)."""
    seeds = sorted({r["seed"] for r in results})
    head = "| Training | " + " | ".join(METRICS) + " | exact match % | val CIDEr-D |"
    lines = [
        f"{dataset} test splits, seeds {','.join(map(str, seeds))}: mean ± std over splits, scores x100, "
        "jieba-segmented, beam 3.",
        "",
        head,
        "|" + " --- |" * (len(METRICS) + 3),
    ]
    for strategy in [*strategies, NN]:
        rows = [r for r in results if r["strategy"] == strategy]
        if not rows:
            continue
        cells = [_fmt([r["test"][m] for r in rows]) for m in METRICS]
        val = _fmt([r["val_cider"] for r in rows]) if all("val_cider" in r for r in rows) else "-"
        exact = _fmt([r["exact_match"] for r in rows])
        lines.append(f"| {LABELS[strategy]} | " + " | ".join(cells) + f" | {exact} | {val} |")
    stats = [r["data"] for r in results if r["strategy"] == NN and "data" in r]
    if stats:
        mean = {k: float(np.mean([d[k] for d in stats])) for k in stats[0]}
        lines += [
            "",
            f"Data (mean over splits): {mean['train_images']:.0f} training / {mean['test_images']:.0f} test images, "
            f"{mean['references_per_image']:.1f} reference(s) per test image of {mean['mean_reference_words']:.1f} "
            "words on average; "
            f"{100 * mean['test_reference_in_training_sentences']:.1f}% of test images have a reference that occurs "
            f"verbatim among the training sentences; {100 * mean['test_reference_words_unseen_in_training']:.1f}% "
            "of the test reference words never occur in a training sentence (neither a generator trained on them "
            "nor the recommendation pool can produce those words).",
        ]
    return "\n".join(lines)
