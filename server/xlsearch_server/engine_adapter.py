"""The one place that knows the SearchEngine's Python API (`xlsearch.search.engine`).

The service talks to the engine only through this adapter, so a change in the engine's signatures or result
classes is absorbed here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from xlsearch_server.types import (
    AnnotationView,
    CaptionCall,
    ImageSource,
    ImageUpload,
    SearchQuery,
    StatsView,
    TagCall,
)

QueryVectors = tuple[np.ndarray, np.ndarray]


class StageTimer:
    """Seconds per stage; `with timer("encode"): ...` (the protocol SearchEngine.encode_query times with)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started


class EngineAdapter:
    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def bundle_hash(self) -> str:
        return str(self.engine.bundle.content_hash)

    def index_version(self) -> int:
        return int(self.engine.index.version)

    def index_uid(self) -> str:
        """Identity of the index lineage (kept across versions and saves)."""
        return str(self.engine.index.uid)

    def index_hash(self) -> str:
        """Changes with every version of every index."""
        return str(self.engine.index.index_hash)

    def supports_query_vectors(self) -> bool:
        """True when the engine can encode a query once and search with the vectors (embedding cache)."""
        return callable(getattr(self.engine, "encode_query", None)) and callable(
            getattr(self.engine, "search_vectors", None)
        )

    def encode_query(self, text: str, timer: StageTimer) -> QueryVectors:
        """(CM vector [dim], CL vector [cl_dim]); tokenize/encode seconds go to `timer`."""
        q_cm, q_cl = self.engine.encode_query(text, timer)
        return np.asarray(q_cm, np.float32), np.asarray(q_cl, np.float32)

    def search(self, query: SearchQuery, vectors: QueryVectors | None = None) -> Any:
        tags = list(query.tags) or None
        if vectors is None:
            return self.engine.search(
                query.query, top_k=query.top_k, mode=query.mode, alpha=query.alpha, tags=tags
            )
        q_cm, q_cl = vectors
        return self.engine.search_vectors(
            q_cm, q_cl, top_k=query.top_k, mode=query.mode, alpha=query.alpha, tags=tags
        )

    def tag(self, call: TagCall) -> AnnotationView:
        a = self.engine.annotator.tag(_ref(call.image), k=call.k, user_tags=call.user_tags)
        return AnnotationView.from_engine(a)

    def caption(self, call: CaptionCall) -> AnnotationView:
        a = self.engine.annotator.caption(_ref(call.image), n_best=call.n_best, recommend=call.recommend)
        return AnnotationView.from_engine(a)

    def prepare_images(self, uploads: list[ImageUpload], start: int = 0) -> Any:
        """Decode and encode one batch of a stream (nothing is added yet)."""
        from xlsearch.search.engine import NewImage

        items = [
            NewImage(image_bytes=u.image_bytes, id=u.id or None, caption=u.caption or None, uri=u.uri or None)
            for u in uploads
        ]
        return self.engine.prepare(items, start)

    def commit_images(self, staged: list[Any]) -> list[str]:
        return [str(i) for i in self.engine.commit(staged)]

    def delete(self, ids: list[str]) -> tuple[int, list[str]]:
        deleted, not_found = self.engine.delete(ids)
        deleted_count = deleted if isinstance(deleted, int) else len(deleted)
        return deleted_count, [str(i) for i in not_found]

    def stats(self) -> StatsView:
        s = dict(self.engine.stats())
        return StatsView(
            images=int(s.get("images", s.get("count", 0))),
            captions=int(s.get("captions", 0)),
            dim=int(s.get("dim", 0)),
            factory=str(s.get("factory", "")),
            bundle_hash=str(s.get("bundle_hash", self.bundle_hash())),
            index_hash=str(s.get("index_hash", self.index_hash())),
            index_version=int(s.get("index_version", s.get("version", self.index_version()))),
            default_alpha=float(s.get("default_alpha", s.get("alpha", 0.0))),
            cl_space=str(s.get("cl_space", "")),
            cache_backend="",
            cache_connected=False,
        )


def _ref(image: ImageSource) -> Any:
    from xlsearch.search.annotate import ImageRef

    return ImageRef(image_bytes=image.image_bytes, image_id=image.image_id)
