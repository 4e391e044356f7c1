"""Tagging metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from xlsearch.eval.tag_metrics import (
    evaluate_tagging,
    lqp_counts,
    lqp_metrics,
    mean_average_precision,
    top_k_mask,
)

SCORES = np.array(
    [
        [0.9, 0.8, 0.1, 0.0],  # truth {0, 2}
        [0.1, 0.7, 0.6, 0.2],  # truth {1}
        [0.3, 0.2, 0.1, 0.9],  # truth {0, 3}
    ]
)
TRUTH = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 1]], dtype=bool)


def test_top_k_mask_fixed_variable_and_ties() -> None:
    assert top_k_mask(SCORES, 2).tolist() == [
        [True, True, False, False],
        [False, True, True, False],
        [True, False, False, True],
    ]
    assert top_k_mask(SCORES, [1, 3, 1]).sum(axis=1).tolist() == [1, 3, 1]
    assert top_k_mask(np.zeros((1, 4)), 2).tolist() == [[True, True, False, False]]  # ties: lower index first
    assert top_k_mask(SCORES, 10).all()  # k larger than the vocabulary: everything


def test_hand_computed_k2() -> None:
    m = evaluate_tagging(SCORES, TRUTH, 2)
    # per image: (P, R, F) = (1/2, 1/2, 1/2), (1/2, 1, 2/3), (1, 1, 1)
    assert m["p"] == pytest.approx(2 / 3)
    assert m["r"] == pytest.approx(2.5 / 3)
    assert m["f"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    # pooled: 4 correct of 6 predicted, of 5 true
    assert m["i_p"] == pytest.approx(4 / 6)
    assert m["i_r"] == pytest.approx(4 / 5)
    assert m["i_f1"] == pytest.approx(2 * (4 / 6) * 0.8 / (4 / 6 + 0.8))
    # per class (P, R): c0 (1, 1), c1 (1/2, 1), c2 (0, 0), c3 (1, 1)
    assert m["c_p"] == pytest.approx(0.625)
    assert m["c_r"] == pytest.approx(0.75)
    c_f1 = 2 * 0.625 * 0.75 / 1.375
    assert m["c_f1"] == pytest.approx(c_f1)
    assert m["h_f1"] == pytest.approx(2 * c_f1 * m["i_f1"] / (c_f1 + m["i_f1"]))
    assert m["mean_k"] == 2 and m["images"] == 3


def test_class_never_predicted_has_precision_zero_and_absent_classes_are_skipped() -> None:
    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.2, 0.4]])
    truth = np.array([[1, 1, 0], [1, 0, 0]], dtype=bool)  # class 2 is in no test image: not averaged
    m = evaluate_tagging(scores, truth, 1)
    # class 0: P 1, R 1; class 1: never predicted -> P 0, R 0
    assert m["c_p"] == pytest.approx(0.5) and m["c_r"] == pytest.approx(0.5)


def test_oracle_k_makes_pooled_precision_equal_recall() -> None:
    m = evaluate_tagging(SCORES, TRUTH, TRUTH.sum(axis=1))
    assert m["i_p"] == pytest.approx(0.8) and m["i_r"] == pytest.approx(0.8)
    rng = np.random.default_rng(0)
    for _ in range(20):
        truth = rng.random((30, 12)) < 0.2
        truth[np.arange(30), rng.integers(0, 12, 30)] = True
        m = evaluate_tagging(rng.random((30, 12)), truth, truth.sum(axis=1))
        assert m["i_p"] == pytest.approx(m["i_r"])
        assert m["i_f1"] == pytest.approx(m["i_p"])


def test_mean_average_precision() -> None:
    # rankings: img0 0,1,2,3 (hits at 1, 3 -> (1 + 2/3) / 2); img1 1,2,3,0 (hit at 1 -> 1); img2 3,0,1,2 (1, 1 -> 1)
    assert mean_average_precision(SCORES, TRUTH) == pytest.approx(((1 + 2 / 3) / 2 + 1 + 1) / 3)
    with pytest.raises(ValueError, match="no ground-truth tag"):
        mean_average_precision(SCORES, np.zeros_like(TRUTH))


def test_lqp() -> None:
    m = lqp_metrics(np.array([1.4, 2.6, 2.5]), np.array([1, 2, 2]))
    assert m["accuracy"] == pytest.approx(2 / 3)  # 1.4 -> 1 right, 2.6 -> 3 wrong, 2.5 -> 2 right
    assert m["mse"] == pytest.approx((0.16 + 0.36 + 0.25) / 3)
    assert lqp_counts(np.array([0.2, -3.0, 1.4, 2.6, 9.0]), classes=4).tolist() == [1, 1, 1, 3, 4]


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="k must be >= 1"):
        evaluate_tagging(SCORES, TRUTH, 0)
    with pytest.raises(ValueError, match="one k per image"):
        evaluate_tagging(SCORES, TRUTH, [1, 2])
    with pytest.raises(ValueError, match="same"):
        evaluate_tagging(SCORES, TRUTH[:2], 1)
    with pytest.raises(ValueError, match="no ground-truth tag"):
        evaluate_tagging(SCORES, np.zeros_like(TRUTH), 1)
    with pytest.raises(ValueError):
        lqp_metrics(np.array([1.0]), np.array([1.0, 2.0]))
