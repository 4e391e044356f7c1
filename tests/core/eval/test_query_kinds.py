"""The benchmark rows for English queries and image-to-image search (xlsearch.eval.query_kinds)."""

from __future__ import annotations

import numpy as np
import pytest

from xlsearch.data.manifest import Manifest, Record
from xlsearch.eval.query_kinds import english_queries, image_to_image_ranks, image_to_image_rows, sentence_key


def rec(i: str, en: list[str], split: str = "test") -> Record:
    return Record(id=i, image=f"{i}.png", split=split, en=en, zh=["猫"], tags_en=[], tags_zh=[])


def test_image_to_image_rank_of_the_best_relevant_image_without_the_query():
    v = np.eye(4)
    v[1] = [0.8, 0.6, 0, 0]  # closest to image 0
    v[2] = [0.6, 0, 0.8, 0]
    groups = ["frog", "cat", "frog", "frog"]
    # query 0: image 1 (other group) is better than 2 and 3 (its group): rank 2; the query itself never counts
    assert image_to_image_ranks(v, groups, [0]).tolist() == [2.0]
    v[3] = v[1]  # now a relevant image ties with the non-relevant one at the top: expected rank 1.5
    assert image_to_image_ranks(v, groups, [0]).tolist() == [1.5]


def test_image_to_image_rows_use_test_images_that_share_a_sentence(tmp_path):
    records = [
        rec("a", ["A frog."]),
        rec("b", ["a frog"], "train"),  # same sentence after normalising case and punctuation
        rec("c", ["A cat."]),  # shares nothing: not a query
        rec("d", ["A dog."], "train"),
    ]
    vectors = {
        "a": np.array([1.0, 0, 0]),
        "b": np.array([0.9, 0.1, 0]),
        "c": np.array([0, 1.0, 0]),
        "d": np.array([0, 0, 1.0]),
    }
    rows = image_to_image_rows(Manifest(tmp_path, records), vectors)
    row = rows["CM i2i (same caption)"]
    assert row["queries"] == 1 and row["mrr"] == 1.0 and row["candidates"] == 3
    assert sentence_key("A  Frog!") == sentence_key("a frog")
    assert image_to_image_rows(Manifest(tmp_path, records[2:]), vectors) == {}


def test_english_queries_are_the_english_sentences():
    queries, relevant, candidates = english_queries(
        [rec("a", ["A frog.", "Green frog."]), rec("b", []), rec("c", ["A cat."])]
    )
    assert queries == ["A frog.", "Green frog.", "A cat."]
    assert relevant.tolist() == [0, 0, 1] and [r.id for r in candidates] == ["a", "c"]


@pytest.mark.parametrize("n", [1, 3])
def test_ranks_are_finite_and_at_least_one(n):
    rng = np.random.default_rng(n)
    v = rng.normal(size=(12, 5))
    groups = [str(i % 4) for i in range(12)]
    ranks = image_to_image_ranks(v, groups, list(range(n)))
    assert (ranks >= 1).all() and (ranks <= 11).all()
