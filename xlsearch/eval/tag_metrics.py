"""Image tagging metrics (torch-free).

* Per-image Precision / Recall / F-measure of the top-k tags, each computed per image and averaged over the test
  images (COCO-CN Table IV protocol, k = 5).
* C-P / C-R / C-F1 (per class) and I-P / I-R / I-F1 (pooled over images) and H-F1 = harmonic mean of C-F1 and I-F1
  (Niu et al., Eq. 6-7). C-F1 and I-F1 combine the averaged precision and recall, as in the paper.
* Label quantity prediction: accuracy (prediction rounded to the nearest integer equals the true count) and MSE.

k may be one integer for every image or one per image (label quantity prediction, or the oracle k = true count).
Conventions where the papers leave a case open: the per-class average runs over the classes present in the test
ground truth (a class no test image carries has no recall); a class never predicted has precision 0; an image's
F is 0 when its precision and recall are both 0. Images without any ground-truth tag must be left out by the caller
(``evaluate_tagging`` refuses them), as their recall is undefined.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["evaluate_tagging", "lqp_counts", "lqp_metrics", "mean_average_precision", "top_k_mask"]


def _ks(k: int | Sequence[int] | np.ndarray, n: int, classes: int) -> np.ndarray:
    ks = np.full(n, k, dtype=np.int64) if np.isscalar(k) else np.asarray(k, dtype=np.int64).reshape(-1)
    if ks.shape != (n,):
        raise ValueError(f"need one k per image: got {ks.shape[0]} for {n} images")
    if n and ks.min() < 1:
        raise ValueError(f"k must be >= 1, got {int(ks.min())}")
    return np.minimum(ks, classes)


def top_k_mask(scores: np.ndarray, k: int | Sequence[int] | np.ndarray) -> np.ndarray:
    """bool [N, C]: the k highest-scoring classes of each row (ties broken by the lower class index)."""
    scores = np.asarray(scores)
    n, c = scores.shape
    ks = _ks(k, n, c)
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(c)[None, :].repeat(n, axis=0), axis=1)
    return ranks < ks[:, None]


def _safe_div(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def _f1(p: np.ndarray | float, r: np.ndarray | float) -> np.ndarray:
    return _safe_div(2.0 * np.asarray(p) * np.asarray(r), np.asarray(p) + np.asarray(r))


def evaluate_tagging(
    scores: np.ndarray, truth: np.ndarray, k: int | Sequence[int] | np.ndarray = 5
) -> dict[str, float]:
    """All tagging metrics for ``scores`` float [N, C] against ``truth`` bool/0-1 [N, C] with top-k predictions.

    Returns p, r, f (per-image averages at k), c_p, c_r, c_f1, i_p, i_r, i_f1, h_f1, mean_k and images."""
    scores, truth = np.asarray(scores), np.asarray(truth).astype(bool)
    if scores.shape != truth.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and truth {truth.shape} must be the same [N, C] shape")
    if scores.shape[0] == 0:
        raise ValueError("no images to evaluate")
    n_true = truth.sum(axis=1)
    if (n_true == 0).any():
        raise ValueError(f"{int((n_true == 0).sum())} image(s) have no ground-truth tag; leave them out")
    pred = top_k_mask(scores, k)
    correct = pred & truth
    n_pred, n_correct = pred.sum(axis=1), correct.sum(axis=1)
    p_img, r_img = _safe_div(n_correct, n_pred), _safe_div(n_correct, n_true)
    present = truth.any(axis=0)
    c_p = float(_safe_div(correct.sum(axis=0), pred.sum(axis=0))[present].mean())
    c_r = float(_safe_div(correct.sum(axis=0), truth.sum(axis=0))[present].mean())
    i_p = float(_safe_div(n_correct.sum(), n_pred.sum()))
    i_r = float(_safe_div(n_correct.sum(), n_true.sum()))
    c_f1, i_f1 = float(_f1(c_p, c_r)), float(_f1(i_p, i_r))
    return {
        "p": float(p_img.mean()),
        "r": float(r_img.mean()),
        "f": float(_f1(p_img, r_img).mean()),
        "c_p": c_p,
        "c_r": c_r,
        "c_f1": c_f1,
        "i_p": i_p,
        "i_r": i_r,
        "i_f1": i_f1,
        "h_f1": float(_f1(c_f1, i_f1)),
        "mean_k": float(n_pred.mean()),
        "images": int(scores.shape[0]),
    }


def mean_average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """Mean over images of the average precision of the score ranking (ties broken by the lower class index).
    Images without a ground-truth tag must be left out."""
    scores, truth = np.asarray(scores), np.asarray(truth).astype(bool)
    if scores.shape != truth.shape or scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError(
            f"scores {scores.shape} and truth {truth.shape} must be the same non-empty [N, C] shape"
        )
    n_true = truth.sum(axis=1)
    if (n_true == 0).any():
        raise ValueError(f"{int((n_true == 0).sum())} image(s) have no ground-truth tag; leave them out")
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = np.take_along_axis(truth, order, axis=1)
    precision_at = np.cumsum(hits, axis=1) / np.arange(1, truth.shape[1] + 1)[None, :]
    return float(((precision_at * hits).sum(axis=1) / n_true).mean())


def lqp_counts(predicted: np.ndarray, classes: int | None = None) -> np.ndarray:
    """Predicted label quantities -> the k used for each image: rounded, at least 1 (at most ``classes``)."""
    ks = np.maximum(np.rint(np.asarray(predicted, dtype=np.float64)), 1).astype(np.int64)
    return ks if classes is None else np.minimum(ks, classes)


def lqp_metrics(predicted: np.ndarray, true_counts: np.ndarray) -> dict[str, float]:
    """Niu et al. Sec. IV-D: accuracy of the rounded prediction, and the MSE of the raw prediction."""
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1)
    true_counts = np.asarray(true_counts, dtype=np.float64).reshape(-1)
    if predicted.shape != true_counts.shape or predicted.size == 0:
        raise ValueError(f"need matching, non-empty counts: {predicted.shape} vs {true_counts.shape}")
    return {
        "accuracy": float((np.rint(predicted) == true_counts).mean()),
        "mse": float(((predicted - true_counts) ** 2).mean()),
    }
