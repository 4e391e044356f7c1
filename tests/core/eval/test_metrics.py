import numpy as np
import pytest

from xlsearch.eval.fusion import choose_alpha, fuse
from xlsearch.eval.metrics import expected_ranks, mean_std, retrieval_metrics, summarize_ranks


def test_ranks_without_ties():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1], [0.0, 0.5, 0.4]])
    relevant = np.array([0, 0, 2])
    # query 0: best -> 1; query 1: 0.2 below 0.3 -> 2; query 2: 0.4 below 0.5 -> 2
    assert expected_ranks(scores, relevant).tolist() == [1.0, 2.0, 2.0]
    m = retrieval_metrics(scores, relevant, ks=(1, 2))
    assert m["mrr"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert m["r@1"] == pytest.approx(1 / 3)
    assert m["r@2"] == pytest.approx(1.0)
    assert m["queries"] == 3


def test_ties_count_at_expected_rank():
    # relevant tied with two others, one strictly better: positions 2, 3, 4 equally likely -> 3
    scores = np.array([[0.9, 0.5, 0.5, 0.5, 0.1]])
    assert expected_ranks(scores, np.array([2])).tolist() == [3.0]
    # all candidates equal: expected rank (N + 1) / 2
    assert expected_ranks(np.zeros((1, 4)), np.array([0])).tolist() == [2.5]
    m = summarize_ranks(np.array([1.5]), ks=(1, 2))
    assert m["mrr"] == pytest.approx(1 / 1.5)
    assert m["r@1"] == 0.0 and m["r@2"] == 1.0


def test_bad_shapes_rejected():
    with pytest.raises(ValueError):
        expected_ranks(np.zeros(3), np.array([0]))
    with pytest.raises(ValueError):
        summarize_ranks(np.array([]))


def test_mean_std():
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(np.sqrt(2.0)))
    assert mean_std([0.5]) == (0.5, 0.0)


def test_fusion_and_alpha_search():
    # CL ranks query 0 right, CM ranks query 1 right; a mix gets both.
    cl = np.array([[1.0, 0.0], [0.6, 0.4]])
    cm = np.array([[0.4, 0.6], [0.0, 1.0]])
    relevant = np.array([0, 1])
    assert fuse(cl, cm, 1.0).tolist() == cl.tolist()
    alpha, mrr = choose_alpha(cl, cm, relevant)
    assert mrr == 1.0
    assert 0.0 < alpha < 1.0
    # at the extremes one query is ranked second
    assert retrieval_metrics(fuse(cl, cm, 0.0), relevant)["mrr"] == 0.75
    with pytest.raises(ValueError):
        fuse(cl, cm, 1.5)
