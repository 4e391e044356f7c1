"""One table of vectors keyed by int64 ids (the image table, the caption table), and the backbone feature store.

``VectorTable``: the search index (exact IDMap2/Flat, or HNSW / IVF with a second exact IDMap2/Flat "store" so results
can be rescored exactly); HNSW cannot remove vectors, so removed ids become tombstones excluded at search time and
dropped by ``rebuild``. ``FeatureStore``: float16 backbone features for Tag/Caption by id, never searched.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from xlsearch.index.factory import FactorySpec, auto_nlist
from xlsearch.index.key import IndexFormatError

# Compact an HNSW table (rebuild the graph) once tombstones exceed this fraction of live vectors.
COMPACT_FRACTION = 0.1


def new_flat(dim: int) -> faiss.Index:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def id_array(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(
        np.fromiter(ids, dtype=np.int64) if not isinstance(ids, np.ndarray) else ids, np.int64
    )


class VectorTable:
    """Vectors of one kind. ``store`` is an exact IDMap2/Flat (the search index itself for flat factories)."""

    def __init__(self, spec: FactorySpec, dim: int, name: str):
        self.spec, self.dim, self.name = spec, dim, name
        self.store = new_flat(dim)
        self.ann: faiss.Index | None = None if spec.exact else self._new_ann(None)
        self.tombstones: set[int] = set()
        self.nlist = 0  # IVF: lists actually trained

    # building
    def _new_ann(self, train: np.ndarray | None) -> faiss.Index | None:
        spec = self.spec
        if spec.kind == "hnsw":
            return faiss.IndexIDMap2(faiss.IndexHNSWFlat(self.dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT))
        if train is None:  # IVF waits for its first vectors
            return None
        n = len(train)
        nlist = spec.nlist if spec.nlist is not None else auto_nlist(n)
        if n < nlist:
            raise ValueError(
                f"{self.name}: {spec.name} needs at least {nlist} training vectors, got {n} "
                "(use IVFauto or a smaller nlist)"
            )
        index = faiss.index_factory(self.dim, f"IVF{nlist},{spec.codec}", faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        if hasattr(ivf, "do_polysemous_training"):
            ivf.do_polysemous_training = False  # never used by the engine; 18x slower PQ training
        try:
            index.train(train)
        except RuntimeError as e:  # e.g. PQ with fewer points than 2**bits centroids
            raise ValueError(f"{self.name}: cannot train {spec.name} on {n} vectors: {e}") from None
        self.nlist = nlist
        return index

    @property
    def count(self) -> int:
        return int(self.store.ntotal)

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.store.id_map).astype(np.int64)

    def ensure_trained(self, vecs: np.ndarray) -> None:
        """IVF: train on the first vectors ever added (before any other mutation, so a failure changes nothing)."""
        if self.spec.kind == "ivf" and self.ann is None and len(vecs):
            self.ann = self._new_ann(vecs)

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        if not len(ids):
            return
        if not self.spec.exact:
            self.ensure_trained(vecs)
            self.ann.add_with_ids(vecs, ids)
        self.store.add_with_ids(vecs, ids)

    def remove(self, ids: np.ndarray) -> None:
        if not len(ids):
            return
        sel = faiss.IDSelectorBatch(ids)
        self.store.remove_ids(sel)
        if self.spec.kind == "hnsw":
            self.tombstones.update(int(i) for i in ids)
        elif self.ann is not None:
            self.ann.remove_ids(sel)

    def needs_compaction(self) -> bool:
        return len(self.tombstones) > COMPACT_FRACTION * max(self.count, 1)

    def rebuild(self) -> None:
        """Rebuild the approximate index from the exact store (drops tombstones; IVF retrains on all vectors)."""
        if self.spec.exact:
            return
        ids, vecs = self.ids(), self.all_vectors()
        self.ann, self.tombstones = None, set()
        self.ann = self._new_ann(vecs if len(vecs) else None)
        if len(ids) and self.ann is not None:
            self.ann.add_with_ids(vecs, ids)

    # reading
    def all_vectors(self) -> np.ndarray:
        """Every stored vector, in the order of ``ids()``."""
        if not self.count:
            return np.zeros((0, self.dim), np.float32)
        return self.store.index.reconstruct_n(0, self.count)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        if not len(ids):
            return np.zeros((0, self.dim), np.float32)
        return self.store.reconstruct_batch(id_array(ids))

    def search(
        self, q: np.ndarray, k: int, allowed: np.ndarray | None, nprobe: int, ef_search: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) for one query [D]; only ids in ``allowed`` when given. -1 padding removed."""
        limit = self.count if allowed is None else min(self.count, len(allowed))
        k = min(k, limit)
        if k <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        keep: list[Any] = []  # faiss selectors hold raw pointers: keep the Python objects alive
        sel = None
        if allowed is not None:
            if self.tombstones:
                allowed = np.setdiff1d(allowed, id_array(self.tombstones))
            sel = faiss.IDSelectorBatch(id_array(allowed))
        elif self.tombstones:
            keep.append(faiss.IDSelectorBatch(id_array(self.tombstones)))
            sel = faiss.IDSelectorNot(keep[-1])
        index = self.store if self.spec.exact else self.ann
        if index is None:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        if self.spec.kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(ef_search, k))
        elif self.spec.kind == "ivf":
            params = faiss.SearchParametersIVF(sel=sel, nprobe=min(nprobe, self.nlist) or 1)
        else:
            params = faiss.SearchParameters(sel=sel) if sel is not None else None
        scores, ids = index.search(np.ascontiguousarray(q.reshape(1, -1), np.float32), k, params=params)
        valid = ids[0] >= 0
        return scores[0][valid], ids[0][valid]

    # persistence
    def write(self, folder: Path) -> None:
        faiss.write_index(
            self.store if self.spec.exact else self._ann_or_empty(), str(folder / f"{self.name}.faiss")
        )
        if not self.spec.exact:
            np.save(folder / f"{self.name}.ids.npy", self.ids())
            np.save(folder / f"{self.name}.vectors.npy", self.all_vectors())
            if self.tombstones:
                np.save(folder / f"{self.name}.tombstones.npy", id_array(sorted(self.tombstones)))

    def _ann_or_empty(self) -> faiss.Index:
        # An IVF table that never saw a vector has no trained index yet; persist an empty flat placeholder.
        return self.ann if self.ann is not None else new_flat(self.dim)

    @classmethod
    def read(cls, folder: Path, spec: FactorySpec, dim: int, name: str) -> VectorTable:
        t = cls(spec, dim, name)
        index = faiss.read_index(str(folder / f"{name}.faiss"))
        if index.d != dim:
            raise IndexFormatError(f"{folder}/{name}.faiss: dim {index.d}, manifest says {dim}")
        if spec.exact:
            t.store = index
            return t
        ids = np.load(folder / f"{name}.ids.npy")
        vecs = np.load(folder / f"{name}.vectors.npy")
        if vecs.shape != (len(ids), dim):
            raise IndexFormatError(
                f"{folder}/{name}.vectors.npy: shape {vecs.shape}, expected ({len(ids)}, {dim})"
            )
        t.store.add_with_ids(np.ascontiguousarray(vecs, np.float32), ids.astype(np.int64))
        if spec.kind == "ivf":
            try:
                t.ann, t.nlist = index, int(faiss.extract_index_ivf(index).nlist)
            except RuntimeError:  # the untrained placeholder written by _ann_or_empty
                t.ann = None
        else:
            t.ann = index
        tomb = folder / f"{name}.tombstones.npy"
        if tomb.is_file():
            t.tombstones = {int(i) for i in np.load(tomb)}
        return t


class FeatureStore:
    """Backbone features by int id (float16: what Tag/Caption by id read instead of the image file). Not searched;
    an image added without a feature simply has none (Tag/Caption by its id then answer FAILED_PRECONDITION)."""

    FILE = "features.faiss"

    def __init__(self, dim: int):
        self.dim = dim
        self.store = self._new() if dim else None

    def _new(self) -> faiss.Index:
        return faiss.IndexIDMap2(faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_fp16))

    @property
    def count(self) -> int:
        return int(self.store.ntotal) if self.store is not None else 0

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        if self.store is not None and len(ids):
            self.store.add_with_ids(np.ascontiguousarray(vecs, np.float32), id_array(ids))

    def remove(self, ids: np.ndarray) -> None:
        if self.store is not None and len(ids):
            self.store.remove_ids(faiss.IDSelectorBatch(id_array(ids)))

    def ids(self) -> np.ndarray:
        if self.store is None:
            return np.zeros(0, np.int64)
        return faiss.vector_to_array(self.store.id_map).astype(np.int64)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        return self.store.reconstruct_batch(id_array(ids))

    def write(self, folder: Path) -> None:
        if self.store is not None:
            faiss.write_index(self.store, str(folder / self.FILE))

    @classmethod
    def read(cls, folder: Path, dim: int) -> FeatureStore:
        t = cls(dim)
        path = folder / cls.FILE
        if dim and path.is_file():
            store = faiss.read_index(str(path))
            if store.d != dim:
                raise IndexFormatError(f"{path}: dim {store.d}, manifest says feature_dim {dim}")
            t.store = store
        return t
