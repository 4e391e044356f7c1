"""Tagging metrics of set predictions (the S-CNN-RNN emits a set; the score-based taggers pick top-k) and the
simulated user tags of the "with user tags" rows. Every row of the tagging table reports the same two blocks:
``@5`` (P/R/F of five tags: the top 5 scores, or 5 labels decoded with the end token masked — what Tag with k = 5
serves) and ``own`` (the model's own number of tags: label-quantity prediction, or the end token)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xlsearch.eval.tag_metrics import evaluate_tagging, lqp_counts, lqp_metrics

__all__ = ["score_metrics", "set_metrics", "sets_to_mask", "simulated_user_tags"]


def sets_to_mask(seqs: Sequence[Sequence[tuple[int, float]]], n_labels: int) -> np.ndarray:
    """bool [N, C]: the labels each image got."""
    mask = np.zeros((len(seqs), n_labels), dtype=bool)
    for row, seq in enumerate(seqs):
        for j, _ in seq:
            mask[row, j] = True
    return mask


def set_metrics(seqs: Sequence[Sequence[tuple[int, float]]], truth: np.ndarray) -> dict[str, float]:
    """Every metric of ``evaluate_tagging`` for predicted label sets (each image has at least one label)."""
    mask = sets_to_mask(seqs, truth.shape[1])
    counts = mask.sum(axis=1)
    if (counts == 0).any():
        raise ValueError("every image needs at least one predicted label")
    return evaluate_tagging(mask.astype(np.float32), truth, counts)


def score_metrics(scores: np.ndarray, counts: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """``@5`` and ``own`` (k = the rounded label-quantity prediction, at least 1) of a score-based tagger, and the
    quality of its label-quantity prediction."""
    truth = np.asarray(truth) > 0
    own = evaluate_tagging(scores, truth, lqp_counts(counts, truth.shape[1]))
    return {
        "@5": evaluate_tagging(scores, truth, 5),
        "own": own,
        "lqp": lqp_metrics(counts, truth.sum(axis=1)),
        "true_k": float(truth.sum(axis=1).mean()),
    }


def sequence_metrics(
    own: Sequence[Sequence[tuple[int, float]]],
    five: Sequence[Sequence[tuple[int, float]]],
    truth: np.ndarray,
) -> dict[str, Any]:
    """``@5`` and ``own`` of a sequence tagger from its free-running and its 5-label decodings."""
    truth = np.asarray(truth) > 0
    counts = sets_to_mask(own, truth.shape[1]).sum(axis=1)
    return {
        "@5": set_metrics(five, truth),
        "own": set_metrics(own, truth),
        "lqp": lqp_metrics(counts, truth.sum(axis=1)),
        "true_k": float(truth.sum(axis=1).mean()),
    }


def simulated_user_tags(truth: np.ndarray, keep: float, seed: int) -> np.ndarray:
    """float32 [N, C]: each image's true tags, each kept with probability ``keep`` (seeded): the tags a user
    "already has" in the rows with user tags (Tux Paint has no user or social tags of its own)."""
    rng = np.random.default_rng(seed)
    return ((rng.random(truth.shape) < keep) & (np.asarray(truth) > 0)).astype(np.float32)
