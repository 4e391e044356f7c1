"""The nearest-neighbour sentence recommendation baseline: the training split's Chinese sentences (the pool the
served captioner also ships) ranked for each image by a retrieval bundle."""

from __future__ import annotations

from xlsearch.bundle.runtime import Bundle
from xlsearch.data.manifest import Manifest
from xlsearch.encode.preprocess import load_image
from xlsearch.search.recommend import SentenceRecommender


def training_pool(manifest: Manifest) -> list[str]:
    """The training split's Chinese sentences, each once (the served recommendation pool)."""
    return list(dict.fromkeys(s for r in manifest.split("train") for s in r.zh))


def recommend_for(bundle: Bundle, manifest: Manifest, ids: list[str], k: int = 5) -> dict[str, list]:
    recommender = SentenceRecommender(bundle, training_pool(manifest))
    by_id = {r.id: r for r in manifest.records}
    out: dict[str, list] = {}
    for start in range(0, len(ids), 32):
        chunk = ids[start : start + 32]
        images = [load_image(manifest.image_path(by_id[i])) for i in chunk]
        for i, recs in zip(chunk, recommender.recommend_images(images, k), strict=True):
            out[i] = [[s, round(score, 5)] for s, score in recs]
    return out
