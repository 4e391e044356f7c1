"""Retrieval metrics for one-relevant-item queries: MRR and Recall@K, with exact ties at their expected rank."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def expected_ranks(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based rank of each query's relevant candidate; ties with it count at their expected position.

    scores: [Q, N] similarity of every query to every candidate; relevant: [Q] index of the relevant candidate.
    A relevant item tied with t-1 others after g strictly better ones sits on average at g + (t + 1) / 2.
    """
    scores = np.asarray(scores)
    relevant = np.asarray(relevant, dtype=np.int64)
    if scores.ndim != 2 or relevant.shape != (scores.shape[0],):
        raise ValueError(f"scores must be [Q, N] and relevant [Q]; got {scores.shape} and {relevant.shape}")
    target = scores[np.arange(len(relevant)), relevant][:, None]
    better = (scores > target).sum(axis=1)
    tied = (scores == target).sum(axis=1)  # includes the relevant item itself
    return better + (tied + 1) / 2.0


def summarize_ranks(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """MRR and R@K (a query counts for R@K when its expected rank is <= K)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no queries to summarise")
    out = {"mrr": float(np.mean(1.0 / ranks))}
    for k in ks:
        out[f"r@{k}"] = float(np.mean(ranks <= k))
    out["queries"] = int(ranks.size)
    return out


def retrieval_metrics(
    scores: np.ndarray, relevant: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    return summarize_ranks(expected_ranks(scores, relevant), ks)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0
