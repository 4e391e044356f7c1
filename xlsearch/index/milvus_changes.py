"""``DurableChanges`` of the Milvus backend: write-through to Milvus (``xlsearch.index.milvus``)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from xlsearch.index.metadata import ImageMeta
from xlsearch.index.milvus import MilvusIndex


class MilvusChanges:
    """``DurableChanges`` of a ``MilvusIndex``: every change returns once Milvus has accepted it (its own
    durability: the message log of a cluster, Milvus Lite's files) and it is visible to Strong reads."""

    def __init__(self, index: MilvusIndex):
        self.index = index
        self._writes = threading.Lock()  # one change at a time from this process (replace = insert + delete)

    def add(
        self,
        metas: Sequence[ImageMeta],
        images: np.ndarray,
        captions: Sequence[np.ndarray | None] | None,
        features: np.ndarray | None,
    ) -> int:
        with self._writes:
            self.index.add(metas, images, captions, features)
        return int(np.asarray(images).nbytes + (0 if features is None else np.asarray(features).nbytes))

    def remove(self, ids: Sequence[str], compact: bool = True) -> tuple[list[str], list[str]]:
        with self._writes:
            return self.index.remove(ids)

    def snapshot(self) -> bool:
        self.index.flush()  # seal Milvus' growing segments
        return True

    def wait(self, timeout: float | None = None) -> None:
        return None

    def close(self) -> None:
        self.index.close()
