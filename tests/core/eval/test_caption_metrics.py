"""Caption metrics: hand-checked values and agreement with pycocoevalcap (the COCO caption evaluation tool)."""

from __future__ import annotations

import math
import random

import pytest

from xlsearch.eval.caption_metrics import bleu, cider_d, rouge_l, score_captions, score_tokens, segment


def test_bleu_hand_checked() -> None:
    # p1 = 2/3, p2 = 1/2, p3 = 0; equal lengths, so no brevity penalty.
    b = bleu({"x": [["a", "b", "d"]]}, {"x": ["a", "b", "c"]})
    assert b[0] == pytest.approx(2 / 3)
    assert b[1] == pytest.approx(math.sqrt(1 / 3))
    assert b[2] < 1e-4 and b[3] < 1e-4


def test_bleu_brevity_penalty_and_closest_reference() -> None:
    # Candidate of 2 words, closest reference has 4: BP = exp(1 - 4/2) = e^-1.
    b = bleu({"x": [["a", "b", "c", "d"], ["a", "b", "c", "d", "e", "f", "g"]]}, {"x": ["a", "b"]})
    assert b[0] == pytest.approx(math.exp(-1))
    assert b[1] == pytest.approx(math.exp(-1))


def test_rouge_l_hand_checked() -> None:
    # LCS("a b c", "a c d e") = 2; P = 2/3, R = 1/2, F_beta=1.2 = 2.44 P R / (R + 1.44 P).
    p, r = 2 / 3, 1 / 2
    assert rouge_l({"x": [["a", "c", "d", "e"]]}, {"x": ["a", "b", "c"]}) == pytest.approx(
        2.44 * p * r / (r + 1.44 * p)
    )
    assert rouge_l({"x": [["q"]]}, {"x": []}) == 0.0


def test_cider_d_hand_checked() -> None:
    # Two images with disjoint words, each hypothesis equal to its reference: every n-gram has df = 1, so the
    # tf-idf vectors are identical (cosine 1 for each n that exists), no length penalty. x has 1- and 2-grams only:
    # 10 * (1 + 1 + 0 + 0) / 4 = 5; y has 1..3-grams: 10 * 3 / 4 = 7.5; the mean is 6.25.
    refs = {"x": [["一只", "青蛙"]], "y": [["红色", "的", "旗子"]]}
    hyps = {"x": ["一只", "青蛙"], "y": ["红色", "的", "旗子"]}
    assert cider_d(refs, hyps) == pytest.approx(6.25)
    # An n-gram seen in every image's references has idf log(2/2) = 0 and counts for nothing.
    assert cider_d({"x": [["猫"]], "y": [["猫"]]}, {"x": ["猫"], "y": ["猫"]}) == 0.0
    assert cider_d(refs, {"x": ["旗子"], "y": ["青蛙"]}) == 0.0


def test_segmentation_is_shared_and_drops_punctuation() -> None:
    assert segment("一只青蛙。") == segment("一只青蛙") == ["一只", "青蛙"]
    scores = score_captions(
        {"x": ["一只青蛙。"], "y": ["绿色的旗子！"]}, {"x": "一只青蛙", "y": "绿色的旗子"}
    )
    assert scores["BLEU-1"] == pytest.approx(1.0)
    assert scores["ROUGE-L"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        score_captions({"x": ["a"]}, {"y": "a"})


def _random_corpus(rng: random.Random, images: int) -> tuple[dict, dict]:
    words = "一只 青蛙 绿色 的 旗子 猫 在 草地 上 一个 男人 狗 红色 房间 里 有".split()
    refs = {
        f"i{k}": [[rng.choice(words) for _ in range(rng.randint(1, 9))] for _ in range(rng.randint(1, 4))]
        for k in range(images)
    }
    hyps = {k: [rng.choice(words) for _ in range(rng.randint(1, 8))] for k in refs}
    return refs, hyps


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_pycocoevalcap(seed: int) -> None:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    refs, hyps = _random_corpus(random.Random(seed), 30)
    gts = {k: [" ".join(r) for r in v] for k, v in refs.items()}
    res = {k: [" ".join(v)] for k, v in hyps.items()}
    ours = score_tokens(refs, hyps)
    theirs_bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for k in range(4):
        assert ours[f"BLEU-{k + 1}"] == pytest.approx(theirs_bleu[k], rel=1e-9, abs=1e-12)
    assert ours["ROUGE-L"] == pytest.approx(Rouge().compute_score(gts, res)[0], rel=1e-9)
    assert ours["CIDEr-D"] == pytest.approx(Cider().compute_score(gts, res)[0], rel=1e-9)
