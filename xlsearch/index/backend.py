"""The index interface the search engine uses, so a second backend can sit behind it (docs/architecture.md, "Index
backends"). The FAISS folder implements both halves: ``ImageIndex`` (``IndexBackend``) and ``IndexStore``
(``DurableChanges``, the change log + snapshots). A backend that owns its durability (a database) implements
``DurableChanges`` by writing through and passes it to ``SearchEngine(store=...)``.

Ids: the engine sees int64 ids (``int_id`` maps the client's string ids); every vector read by id must return what
was added (exactly, or within the documented precision of the backend) because the fusion rescores candidates
from them. Both top-k searches may be approximate; ``exact`` says whether they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from xlsearch.index.key import BundleKey
from xlsearch.index.metadata import ImageMeta


@runtime_checkable
class IndexBackend(Protocol):
    """Reads, and in-memory changes, of one index. Not thread-safe: the engine holds a readers-writer lock around
    every call (many readers, or one writer)."""

    key: BundleKey
    version: int  # bumped by every change (caches and the change log key on it)
    uid: str  # identity of the index lineage, kept across versions
    folder: Path | None
    nprobe: int
    ef_search: int

    @property
    def dim(self) -> int: ...  # image (CM) space

    @property
    def cl_dim(self) -> int: ...  # caption (CL) space

    @property
    def bundle_hash(self) -> str: ...

    @property
    def cl_space(self) -> str: ...

    @property
    def factory(self) -> str: ...

    @property
    def exact(self) -> bool: ...  # True when both top-k searches are exact

    @property
    def index_hash(self) -> str: ...

    @property
    def count(self) -> int: ...

    @property
    def caption_count(self) -> int: ...

    @property
    def uncaptioned_count(self) -> int: ...

    def check_compatible(self, bundle: Any) -> None: ...

    # top-k of one query vector, optionally among ``allowed`` int ids -> (scores, int ids), best first
    def search_images(
        self, q: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def search_captions(
        self, q: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    # stored data by int id (the fusion's exact rescoring; Tag/Caption by id)
    def image_vectors(self, int_ids: np.ndarray) -> np.ndarray: ...

    def caption_vectors(self, int_ids: np.ndarray) -> np.ndarray: ...

    def has_caption(self, int_ids: np.ndarray) -> np.ndarray: ...

    def image_features(self, int_ids: np.ndarray) -> np.ndarray | None: ...

    def metadata(self, int_ids: Iterable[int]) -> list[ImageMeta]: ...

    def int_id(self, sid: str) -> int | None: ...

    def ids_with_tags(self, tags: Iterable[str]) -> np.ndarray: ...

    def tag_counts(self) -> dict[str, int]: ...

    # in-memory changes (the engine without persistence; replay)
    def add(
        self,
        metas: Sequence[ImageMeta],
        image_vectors: np.ndarray,
        caption_vectors: Any = None,
        features: np.ndarray | None = None,
    ) -> np.ndarray: ...

    def remove(self, ids: Iterable[str]) -> tuple[list[str], list[str]]: ...

    def needs_compaction(self) -> bool: ...

    def compact(self) -> None: ...


@runtime_checkable
class DurableChanges(Protocol):
    """Durable changes of a live index: each call returns once the change is durable *and* visible to searches
    (``IndexStore``: logged, fsync'd, then applied under the engine's write lock)."""

    def add(
        self,
        metas: Sequence[ImageMeta],
        images: np.ndarray,
        captions: Sequence[np.ndarray | None] | None,
        features: np.ndarray | None,
    ) -> int: ...  # bytes written

    def remove(self, ids: Sequence[str], compact: bool = True) -> tuple[list[str], list[str]]: ...

    def snapshot(self) -> bool: ...  # compact the durable state now (FAISS: a full folder snapshot)

    def wait(self, timeout: float | None = None) -> None: ...  # background work (snapshots) finished

    def close(self) -> None: ...
