"""Test metrics of a trained tagger under every way of choosing how many tags an image gets (k = 5, k = the mean
training count, k = the label-quantity prediction, the oracle k)."""

from __future__ import annotations

from typing import Any

from xlsearch.eval.tag_metrics import evaluate_tagging, lqp_counts, lqp_metrics
from xlsearch_training.tagging.data import TagData
from xlsearch_training.tagging.train import TrainedTagger

K_MODES = ("k=5", "k=mean", "LQP", "oracle k")


def evaluate_modes(trained: TrainedTagger, data: TagData) -> dict[str, Any]:
    """Metrics of every k mode on the images of ``data`` that carry a vocabulary tag, plus the LQP quality."""
    tagged = data.subset(data.zh_tagged)
    if not tagged.ids:
        raise ValueError("no evaluation image carries a vocabulary tag")
    scores, counts = trained.scores(tagged.x)
    truth = tagged.zh > 0
    true_k = truth.sum(axis=1)
    classes = truth.shape[1]
    mean_k = max(1, int(round(trained.mean_count)))
    ks = {"k=5": 5, "k=mean": mean_k, "LQP": lqp_counts(counts, classes), "oracle k": true_k}
    out: dict[str, Any] = {mode: evaluate_tagging(scores, truth, k) for mode, k in ks.items()}
    out["lqp"] = lqp_metrics(counts, true_k)
    out["fixed_mean_k"] = mean_k
    return out
