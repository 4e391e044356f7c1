"""CLM fusion: s = a * CL + (1 - a) * CM, with a chosen on validation queries by grid search on MRR, and the
choice of the served CL space + alpha (`choose_fusion`: the best on validation, or the one-standard-error rule
toward a prior)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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


# -- choosing the served fusion: a CL space and alpha ------------------------------------------------------------
SELECTION_RULES = ("best", "1se")


@dataclass
class FusionChoice:
    """The served fusion: CL space + alpha, how they were chosen and every candidate's validation MRR."""

    cl_space: str
    alpha: float
    val_mrr: float
    rule: str
    prior: tuple[str, float] | None = None
    candidates: dict[str, dict[str, float]] = field(default_factory=dict)  # space -> {alpha, val_mrr} (best)
    eligible: int = 0  # candidates within one standard error of the best (rule "1se")

    def to_fusion(self) -> dict[str, Any]:
        """The bundle manifest's ``fusion`` section."""
        return {
            "cl_space": self.cl_space,
            "alpha": self.alpha,
            "val_mrr": self.val_mrr,
            "rule": self.rule,
            "prior": list(self.prior) if self.prior else None,
            "eligible": self.eligible,
            "candidates": self.candidates,
        }


def choose_fusion(
    spaces: dict[str, np.ndarray],
    cm: np.ndarray,
    relevant: np.ndarray,
    rule: str = "1se",
    prior: tuple[str, float] | None = ("sentence", 1.0),
    step: float = 0.01,
) -> FusionChoice:
    """Choose the served (CL space, alpha) on validation queries: ``spaces`` maps each CL space to its [Q, N] val
    scores, ``cm`` the [Q, N] CM scores.

    - ``best``: the (space, alpha) with the highest validation MRR (ties: alpha nearest 0.5).
    - ``1se`` (default): the one-standard-error rule toward a prior. Every candidate whose validation MRR is within
      one paired standard error of the best one (the std of the per-query reciprocal-rank differences / sqrt(Q))
      is as good as the best as far as the validation split can tell; among those, the one nearest the ``prior``
      (space, alpha) wins — distance = 1 for another space + |alpha - prior alpha| — then the higher MRR. The prior
      is the configuration that needs no trust in the validation split: for a trained bundle the untrained
      zero-shot CL (``("sentence", 1.0)``), whose validation score, unlike the trained heads', is not inflated by
      model selection on that same split.
    """
    if rule not in SELECTION_RULES:
        raise ValueError(f"rule must be one of {SELECTION_RULES}, got {rule!r}")
    grid = alpha_grid(step)
    rr: dict[tuple[str, float], np.ndarray] = {}
    for space, cl in spaces.items():
        for a in grid:
            rr[(space, float(a))] = 1.0 / expected_ranks(fuse(cl, cm, float(a)), relevant)
    means = {k: float(v.mean()) for k, v in rr.items()}
    per_space = {}
    for space in spaces:
        a, m = choose_alpha(spaces[space], cm, relevant, step)
        per_space[space] = {"alpha": a, "val_mrr": m}
    best_space = max(per_space, key=lambda s: (per_space[s]["val_mrr"], s == (prior or ("",))[0]))
    best = (best_space, per_space[best_space]["alpha"])
    if rule == "best" or prior is None:
        return FusionChoice(best[0], best[1], means[best], "best", prior, per_space, 1)
    n = len(relevant)
    eligible = []
    for key, values in rr.items():
        diff = values - rr[best]
        se = float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
        if means[key] >= means[best] - se:
            eligible.append(key)

    def distance(key: tuple[str, float]) -> tuple[float, float]:
        return (float(key[0] != prior[0]) + abs(key[1] - prior[1]), -means[key])

    chosen = min(eligible, key=distance)
    return FusionChoice(chosen[0], chosen[1], means[chosen], "1se", prior, per_space, len(eligible))


# -- three-way fusion: CL visual, CL e5 and CM with weights on the simplex -----------------------------------------
def simplex_grid(step: float = 0.05) -> list[tuple[float, float, float]]:
    """(w_visual, w_sentence, w_cm) >= 0 summing to 1, in ``step``s."""
    n = int(round(1.0 / step))
    return [(i / n, j / n, (n - i - j) / n) for i in range(n + 1) for j in range(n + 1 - i)]


def choose_simplex(
    cl_visual: np.ndarray,
    cl_sentence: np.ndarray,
    cm: np.ndarray,
    relevant: np.ndarray,
    rule: str = "1se",
    prior: tuple[float, float, float] = (0.0, 1.0, 0.0),
    step: float = 0.05,
) -> tuple[tuple[float, float, float], float, int]:
    """Weights of s = w_v * CL_visual + w_s * CL_sentence + w_m * CM chosen on validation: ``best`` (highest MRR,
    ties nearest the prior) or ``1se`` (within one paired standard error of the best, the nearest to ``prior`` in
    L1). Returns (weights, validation MRR, candidates within 1 SE)."""
    if rule not in SELECTION_RULES:
        raise ValueError(f"rule must be one of {SELECTION_RULES}, got {rule!r}")
    grid = simplex_grid(step)
    rr = [1.0 / expected_ranks(w[0] * cl_visual + w[1] * cl_sentence + w[2] * cm, relevant) for w in grid]
    means = np.array([r.mean() for r in rr])

    def dist(k: int) -> float:
        return float(sum(abs(a - b) for a, b in zip(grid[k], prior, strict=True)))

    best = max(range(len(grid)), key=lambda k: (means[k], -dist(k)))
    if rule == "best":
        return grid[best], float(means[best]), 1
    n = len(relevant)
    eligible = [
        k
        for k in range(len(grid))
        if means[k] >= means[best] - float((rr[k] - rr[best]).std(ddof=1) / np.sqrt(n))
    ]
    chosen = min(eligible, key=lambda k: (dist(k), -means[k]))
    return grid[chosen], float(means[chosen]), len(eligible)


def simplex_fusion(
    weights: tuple[float, float, float], val_mrr: float, rule: str, eligible: int, step: float = 0.05
) -> dict[str, Any]:
    """The bundle manifest's ``fusion`` for simplex weights (w_visual, w_sentence, w_cm): CL in the joint space
    with alpha = w_visual + w_sentence, or in one space when the other weighs 0."""
    wv, ws, _ = weights
    alpha = round(wv + ws, 10)
    how = {"rule": f"simplex {rule}", "simplex_weights": list(weights), "val_mrr": val_mrr, "eligible": eligible,
           "step": step}  # fmt: skip
    if wv > 0 and ws > 0:
        return {
            "cl_space": "joint",
            "alpha": alpha,
            "weights": {"visual": wv / alpha, "sentence": ws / alpha},
            **how,
        }
    return {"cl_space": "visual" if wv > 0 else "sentence", "alpha": alpha, **how}
