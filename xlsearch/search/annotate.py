"""Tagging and captioning for the service: an image (bytes, or the id of an indexed image) -> Chinese tags, or
generated Chinese captions plus recommended sentences. Torch-free; the models are the bundle's components.

One backbone pass gives both the index vector (for sentence recommendation, in the retrieval space) and the
backbone feature the tagger and captioner read.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.errors import InvalidArgument
from xlsearch.search.errors import ComponentMissing, ImageTooLarge
from xlsearch.search.images import decode_image_bytes
from xlsearch.search.types import Annotation, ImageRef, Limits, SentenceItem, TagItem


class Annotator:
    """Bound to one SearchEngine (its bundle, its index through ``stored_image``, its limits). Thread-safe."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.bundle = engine.bundle
        self.limits: Limits = engine.limits
        self._recommender: Any = None
        self._lock = threading.Lock()

    # -- components ---------------------------------------------------------------------------------------------
    def _tagger(self) -> Any:
        tagger = self.bundle.tagger
        if tagger is None:
            raise ComponentMissing(
                "the served bundle has no tagger (attach one with xlsearch-train-tagger --bundle)"
            )
        return tagger

    def _captioner(self) -> Any:
        captioner = self.bundle.captioner
        if captioner is None:
            raise ComponentMissing(
                "the served bundle has no captioner (attach one with xlsearch-train-captioner --bundle)"
            )
        return captioner

    def recommender(self) -> Any:
        """Sentence recommendation over the captioner's sentence pool, encoded once on first use."""
        with self._lock:
            if self._recommender is None:
                from xlsearch.search.recommend import SentenceRecommender

                spec = self.bundle.manifest.captioner
                pool = Path(self.bundle.folder) / spec["folder"] / spec["sentence_pool"]
                sentences = json.loads(pool.read_text(encoding="utf-8"))
                self._recommender = SentenceRecommender(self.bundle, sentences)
            return self._recommender

    # -- images -------------------------------------------------------------------------------------------------
    def _load(self, ref: ImageRef) -> np.ndarray:
        """The query image's model input pixels, decoded with the engine's limits (bytes only: indexed images are
        never re-read)."""
        return decode_image_bytes(ref.image_bytes, self.bundle.preprocess_config, self.engine.limits, "image")

    def _check_ref(self, ref: ImageRef) -> None:
        """The request's own mistakes come first, before whether this bundle can serve it at all."""
        if bool(ref.image_bytes) == bool(ref.image_id.strip()):
            raise InvalidArgument("give exactly one of image.image_bytes and image.image_id")
        if len(ref.image_bytes) > self.limits.max_image_bytes:
            raise ImageTooLarge(
                f"image has {len(ref.image_bytes)} bytes; the limit is {self.limits.max_image_bytes}"
            )

    def _encode(self, ref: ImageRef, timings: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """([1,D] index vector, [1,F] backbone feature) of the image. An indexed image's come from the index: a
        client-supplied uri is metadata only, never opened."""
        t0 = time.perf_counter()
        if ref.image_id:
            emb, feat = self.engine.stored_image(ref.image_id)  # NotFound / ImageUnavailable
            timings["lookup"] = time.perf_counter() - t0
            return emb[None], feat[None]
        pixels = self._load(ref)
        t1 = time.perf_counter()
        emb, feat = self.bundle.encode_pixels_with_features(pixels[None])
        timings["decode_image"] = t1 - t0
        timings["encode_image"] = time.perf_counter() - t1
        return emb, feat

    # -- tagging ------------------------------------------------------------------------------------------------
    def tag(
        self, ref: ImageRef, k: int | None = None, user_tags: list[str] | tuple[str, ...] = ()
    ) -> Annotation:
        """Chinese tags with scores and English counterparts; the top-m^ (label quantity prediction) unless k."""
        self._check_ref(ref)
        tagger = self._tagger()
        lim = self.limits
        top = min(lim.max_tag_k, len(tagger.vocabulary))
        if k is not None and not 1 <= k <= top:
            raise InvalidArgument(
                f"k must be between 1 and {top} (omit it for the predicted tag count), got {k}"
            )
        given = list(dict.fromkeys(t.strip() for t in user_tags if t.strip()))
        if len(given) > lim.max_user_tags:
            raise InvalidArgument(f"at most {lim.max_user_tags} user tags, got {len(given)}")
        if given and not tagger.accepts_user_tags:
            raise InvalidArgument("the served tagger was trained without user tags; omit user_tags")
        unknown = tagger.unknown_tags(given)
        if unknown:
            raise InvalidArgument(f"unknown user tags (not in the tag vocabulary): {', '.join(unknown)}")
        out = Annotation()
        _, feat = self._encode(ref, out.timings)
        t0 = time.perf_counter()
        scored = tagger.predict(feat, k=k, user_tags=[given] if given else None)[0]
        out.timings["tag"] = time.perf_counter() - t0
        out.tags = [TagItem(s.tag, float(s.score), _english(s.english)) for s in scored]
        return out

    def predicted_tags(self, features: np.ndarray) -> list[list[str]]:
        """Predicted tag names per image (what the index stores and what a tag-conditioned captioner reads)."""
        return [[s.tag for s in scored] for scored in self._tagger().predict(features)]

    # -- captioning ---------------------------------------------------------------------------------------------
    def caption(self, ref: ImageRef, n_best: int = 1, recommend: bool = False) -> Annotation:
        self._check_ref(ref)
        captioner = self._captioner()
        lim = self.limits
        if n_best == 0:
            n_best = 1
        if not 1 <= n_best <= lim.max_n_best:
            raise InvalidArgument(f"n_best must be between 1 and {lim.max_n_best} (0 for 1), got {n_best}")
        out = Annotation()
        emb, feat = self._encode(ref, out.timings)
        t0 = time.perf_counter()
        tags = self.predicted_tags(feat) if captioner.needs_tags else None
        beams = captioner.generate(
            feat, n_best=n_best, beam_size=max(lim.caption_beam_size, n_best), tags=tags
        )[0]
        out.captions = [SentenceItem(s.text, float(s.log_prob)) for s in beams]
        out.timings["caption"] = time.perf_counter() - t0
        if recommend:
            t0 = time.perf_counter()
            ranked = self.recommender().recommend(emb, k=lim.recommend_k)[0]
            out.recommended = [SentenceItem(text, float(score)) for text, score in ranked]
            out.timings["recommend"] = time.perf_counter() - t0
        return out


def _english(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)
