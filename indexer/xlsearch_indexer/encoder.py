"""The indexer's mapper parts: ``ImageDecoder`` (file -> model input pixels, the server's decode path and limits)
and ``BundleEncoder`` (pixels -> image vector, backbone feature and predicted tags; captions -> CL vectors), so
images indexed here and images added to a running server are encoded identically."""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

from xlsearch.bundle.tagger import confident_tags
from xlsearch.encode.decode import decode_pixels
from xlsearch.encode.preprocess import (
    DEFAULT_MAX_ASPECT,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
    DecodeLimits,
    ImageError,
    PreprocessConfig,
)
from xlsearch_indexer.sources import SourceItem

# Stored predicted tags need at least this probability (the Tag RPC still returns every top-m^ tag with its score).
DEFAULT_MIN_TAG_SCORE = 0.3


class ImageDecoder:
    """File -> preprocessed pixels (``decode_pixels``, the server's decode path, with the same default limits);
    raises ImageError (the item is skipped) for missing, oversized or corrupt files, and for images above the
    pixel, side or aspect-ratio limits. Runs in worker threads: PIL decoding and numpy release the GIL for most of
    the work."""

    def __init__(
        self,
        cfg: PreprocessConfig,
        max_bytes: int,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_side: int = DEFAULT_MAX_SIDE,
        max_aspect: float = DEFAULT_MAX_ASPECT,
    ):
        self.cfg, self.max_bytes = cfg, max_bytes
        self.limits = DecodeLimits(max_pixels, max_side, max_aspect)

    def __call__(self, item: SourceItem) -> np.ndarray:
        try:
            size = os.stat(item.path).st_size
        except OSError as e:
            raise ImageError(f"{item.path}: cannot read ({e.strerror or e})") from None
        if size > self.max_bytes:
            raise ImageError(f"{item.path}: {size} bytes exceeds --max-image-bytes={self.max_bytes}")
        return decode_pixels(item.path, self.cfg, self.limits)


class Encoder(Protocol):
    dim: int
    cl_dim: int
    feature_dim: int  # 0: the bundle has no feature output

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """[B,3,S,S] (or [B,10,3,S,S] oversampled) -> [B,D]."""
        ...

    def encode_images_and_tags(
        self, pixels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, list[tuple[str, ...]]]:
        """[B,D] vectors, [B,F] backbone features (None without a feature output) and each image's predicted
        Chinese tags (empty tuples without a tagger)."""
        ...

    def encode_captions(self, texts: list[str]) -> np.ndarray:
        """English captions -> [B,D] in the bundle's CL space."""
        ...


class BundleEncoder:
    """The bundle's encoders (``Bundle.encode_pixels``: the same crop averaging the server uses)."""

    def __init__(self, bundle: Any, predict_tags: bool = True, min_tag_score: float = DEFAULT_MIN_TAG_SCORE):
        self.bundle = bundle
        self.dim, self.cl_dim = int(bundle.dim), int(bundle.cl_dim)
        self.feature_dim = bundle.manifest.image_encoder.component_dim  # what the components read
        self.tagger = bundle.tagger if predict_tags else None
        self.min_tag_score = min_tag_score

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        return self.bundle.encode_pixels(pixels)

    def encode_images_and_tags(
        self, pixels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, list[tuple[str, ...]]]:
        """One backbone pass gives the index vector and the feature the index stores (Tag/Caption by id) and the
        tagger reads (top-m^ tags by LQP)."""
        if not self.bundle.has_features:
            return self.encode_images(pixels), None, [()] * len(pixels)
        vecs, feats = self.bundle.encode_pixels_with_features(pixels)
        if self.tagger is None:
            return vecs, feats, [()] * len(pixels)
        return vecs, feats, confident_tags(self.tagger.predict(feats), self.min_tag_score)

    def encode_captions(self, texts: list[str]) -> np.ndarray:
        return self.bundle.cl_vectors(texts, "en")
