"""Chinese sentence recommendation (COCO-CN Sec. III-A2): for an image, the pool sentences closest to it by cosine
in the retrieval bundle's visual space (the zh text encoder maps sentences there; the image encoder maps images).
A product feature and the nearest-neighbour baseline of the captioning evaluation. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xlsearch.errors import InvalidArgument

__all__ = ["RecommendInputError", "SentenceRecommender"]


class RecommendInputError(InvalidArgument):
    """Bad input to `SentenceRecommender` (empty pool, embedding shape or values, k)."""


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class SentenceRecommender:
    """A sentence pool encoded once with ``bundle.encode_texts(sentences, "zh")``; duplicates are kept once (first
    occurrence order), so the top k are k different sentences."""

    def __init__(
        self, bundle: Any, sentences: Sequence[str], lang: str = "zh", batch_size: int = 256
    ) -> None:
        if isinstance(sentences, str):
            raise RecommendInputError("sentences must be a list of strings, not one string")
        pool = list(dict.fromkeys(s.strip() for s in sentences if isinstance(s, str) and s.strip()))
        if not pool:
            raise RecommendInputError("the sentence pool is empty")
        self.bundle = bundle
        self.sentences = pool
        parts = [bundle.encode_texts(pool[i : i + batch_size], lang) for i in range(0, len(pool), batch_size)]
        self.vectors = _l2n(np.concatenate(parts).astype(np.float32))

    def __len__(self) -> int:
        return len(self.sentences)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def recommend(self, image_embeddings: np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
        """Per image, the ``k`` most similar pool sentences with their cosine, best first (ties: pool order)."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise RecommendInputError(f"k must be a positive integer, got {k!r}")
        emb = np.asarray(image_embeddings)
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise RecommendInputError(
                f"image embeddings must have shape [B, {self.dim}], got {list(emb.shape)}"
            )
        if not np.issubdtype(emb.dtype, np.number) or not np.isfinite(emb).all():
            raise RecommendInputError("image embeddings must be finite numbers")
        sims = _l2n(emb.astype(np.float32)) @ self.vectors.T
        k = min(k, len(self.sentences))
        out = []
        for row in sims:
            top = np.argsort(-row, kind="stable")[:k]
            out.append([(self.sentences[j], float(row[j])) for j in top])
        return out

    def recommend_images(self, images: list, k: int = 5) -> list[list[tuple[str, float]]]:
        """PIL images -> recommendations (index vectors from the bundle's image encoder)."""
        return self.recommend(self.bundle.encode_images(images), k)
