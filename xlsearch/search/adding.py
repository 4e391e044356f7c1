"""Preparing AddImages: validate each new image's fields, then decode and encode the batch on the one image pipeline
(``xlsearch.encode.pipeline``), exactly as ``xlsearch index`` does (image vector, backbone feature, predicted tags;
the caption in the bundle's CL space). No index access, no lock: a stream is prepared batch by batch as it arrives
and committed once (``SearchEngine.commit``)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from xlsearch.bundle.tagger import confident_tags
from xlsearch.encode.pipeline import Row, map_images
from xlsearch.errors import InvalidArgument
from xlsearch.index.image_index import ImageMeta
from xlsearch.search.images import decode_image_bytes
from xlsearch.search.types import Limits, NewImage, PreparedImages


class ImagePreparer:
    def __init__(self, bundle: Any, limits: Limits, dim: int, min_tag_score: float, encode_batch: int = 16):
        self.bundle, self.limits, self.dim = bundle, limits, dim
        self.min_tag_score, self.encode_batch = min_tag_score, encode_batch

    def prepare(self, items: Sequence[NewImage], start: int = 0) -> PreparedImages:
        """``start`` numbers the items in messages; fails on the first bad image (all or nothing)."""
        metas = [self.meta(start + n, item) for n, item in enumerate(items)]
        if not metas:
            return PreparedImages([], np.zeros((0, self.dim), np.float32), [], None)
        cfg, lim = self.bundle.preprocess_config, self.limits
        numbered = list(enumerate(items, start))
        rows = [
            row
            for _, row in map_images(
                numbered,
                lambda x: decode_image_bytes(x[1].image_bytes, cfg, lim, f"item {x[0]}"),
                self.encode_rows,
                batch_size=self.encode_batch,
                workers=0,
            )
        ]
        captioned = [n for n, m in enumerate(metas) if m.has_caption]
        cap_rows: list[np.ndarray | None] = [None] * len(metas)
        if captioned:
            cap_vecs = self.bundle.cl_vectors([metas[n].caption for n in captioned], "en")
            for n, v in zip(captioned, cap_vecs, strict=True):
                cap_rows[n] = v
        metas = [
            replace(m, tags=tuple(dict.fromkeys([*m.tags, *r.extra])))
            for m, r in zip(metas, rows, strict=True)
        ]
        feats = [r.vectors["feature"] for r in rows]
        return PreparedImages(
            metas,
            np.stack([r.vectors["image"] for r in rows]),
            cap_rows,
            np.stack(feats) if all(f is not None for f in feats) else None,
        )

    def encode_rows(self, items: list[Any], pixels: np.ndarray) -> list[Row]:
        """Index vectors, backbone features (stored so Tag/Caption by id never read a file; None when the bundle
        has no feature output) and, when the bundle has a tagger, each image's predicted Chinese tags (stored in
        the metadata so Search can filter on them, exactly as the indexer does)."""
        if not self.bundle.has_features:
            return [Row({"image": v, "feature": None}, extra=()) for v in self.bundle.encode_pixels(pixels)]
        emb, feat = self.bundle.encode_pixels_with_features(pixels)
        tagger = self.bundle.tagger
        tags = (
            confident_tags(tagger.predict(feat), self.min_tag_score)
            if tagger is not None
            else [()] * len(emb)
        )
        return [Row({"image": e, "feature": f}, extra=t) for e, f, t in zip(emb, feat, tags, strict=True)]

    def meta(self, n: int, item: NewImage) -> ImageMeta:
        """The new image's metadata, checked before anything is decoded."""
        lim = self.limits
        image_id = (item.id or "").strip() or hashlib.sha256(item.image_bytes or b"").hexdigest()
        if len(image_id) > lim.max_id_chars:
            raise InvalidArgument(f"item {n}: id longer than {lim.max_id_chars} characters")
        caption = (item.caption or "").strip()
        if len(caption) > lim.max_caption_chars:
            raise InvalidArgument(f"item {n}: caption longer than {lim.max_caption_chars} characters")
        tags = tuple(t.strip() for t in item.tags if t.strip())
        return ImageMeta(image_id, item.uri or "", (caption,) if caption else (), tags)
