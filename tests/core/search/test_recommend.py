"""Sentence recommendation with the tiny retrieval bundle: the pool is encoded once, results are the top-k pool
sentences by cosine in the bundle's visual space, and bad input is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xlsearch.bundle.runtime import Bundle
from xlsearch.data.manifest import read_manifest
from xlsearch.encode.preprocess import load_image
from xlsearch.search.recommend import RecommendInputError, SentenceRecommender


@pytest.fixture(scope="module")
def setup(tiny_bundle: Path, tiny_manifest: Path):
    bundle = Bundle(tiny_bundle, intra_op_threads=1)
    manifest = read_manifest(tiny_manifest)
    train = manifest.split("train")
    pool = [s for r in train for s in r.zh]
    return bundle, manifest, pool


def test_recommendations_are_the_nearest_pool_sentences(setup) -> None:
    bundle, manifest, pool = setup
    recommender = SentenceRecommender(bundle, pool + pool[:3])  # duplicates are kept once
    assert recommender.sentences == list(dict.fromkeys(pool))
    records = manifest.split("test")[:4]
    images = [load_image(manifest.image_path(r)) for r in records]
    embeddings = bundle.encode_images(images)
    recs = recommender.recommend(embeddings, k=5)
    assert recs == recommender.recommend_images(images, k=5)
    text_vecs = bundle.encode_texts(recommender.sentences, "zh")
    text_vecs /= np.linalg.norm(text_vecs, axis=1, keepdims=True)
    for emb, row in zip(embeddings, recs, strict=True):
        cosines = text_vecs @ (emb / np.linalg.norm(emb))
        best = np.argsort(-cosines, kind="stable")[:5]
        assert [s for s, _ in row] == [recommender.sentences[j] for j in best]
        assert [c for _, c in row] == pytest.approx(cosines[best].tolist(), abs=1e-5)
        assert len({s for s, _ in row}) == 5


def test_training_images_find_their_own_sentence(setup) -> None:
    """The retrieval model was trained on these pairs: an image's own sentence should mostly be in its top 5."""
    bundle, manifest, pool = setup
    recommender = SentenceRecommender(bundle, pool)
    records = manifest.split("train")[:30]
    recs = recommender.recommend_images([load_image(manifest.image_path(r)) for r in records], k=5)
    hits = sum(any(s in r.zh for s, _ in row) for r, row in zip(records, recs, strict=True))
    assert hits >= 10, f"own sentence in the top 5 for only {hits}/30 training images"


def test_bad_input_is_refused(setup) -> None:
    bundle, _, pool = setup
    recommender = SentenceRecommender(bundle, pool[:10])
    assert len(recommender.recommend(np.ones((1, recommender.dim)), k=50)[0]) == 10  # k capped by the pool
    for kwargs in (
        {"image_embeddings": np.ones((1, recommender.dim)), "k": 0},
        {"image_embeddings": np.ones((1, recommender.dim + 1))},
        {"image_embeddings": np.ones(recommender.dim)},
        {"image_embeddings": np.full((1, recommender.dim), np.nan)},
    ):
        with pytest.raises(RecommendInputError):
            recommender.recommend(**kwargs)
    for bad_pool in ([], ["  "], "一只青蛙"):
        with pytest.raises(RecommendInputError):
            SentenceRecommender(bundle, bad_pool)
