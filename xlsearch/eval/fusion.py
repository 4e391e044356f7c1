"""CLM fusion: s = a * CL + (1 - a) * CM, with a chosen on validation queries by grid search on MRR."""

from __future__ import annotations

import numpy as np

from xlsearch.eval.metrics import expected_ranks


def fuse(cl: np.ndarray, cm: np.ndarray, alpha: float) -> np.ndarray:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return alpha * cl + (1.0 - alpha) * cm


def alpha_grid(step: float = 0.01) -> np.ndarray:
    n = int(round(1.0 / step))
    return np.round(np.linspace(0.0, 1.0, n + 1), 10)


def choose_alpha(
    cl: np.ndarray, cm: np.ndarray, relevant: np.ndarray, step: float = 0.01
) -> tuple[float, float]:
    """Best (alpha, MRR) over [0, 1] in `step`s; among equal MRRs the one nearest 0.5 wins (least extreme)."""
    best: tuple[float, float, float] | None = None  # (mrr, -distance to 0.5, alpha)
    for a in alpha_grid(step):
        mrr = float(np.mean(1.0 / expected_ranks(fuse(cl, cm, float(a)), relevant)))
        key = (mrr, -abs(a - 0.5), float(a))
        if best is None or key > best:
            best = key
    assert best is not None
    return best[2], best[0]
