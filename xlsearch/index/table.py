"""One table of vectors keyed by int64 ids (the image table, the caption table).

One copy of the vectors per table, whatever the factory: the exact rescoring of the fusion reads vectors back from
the search index itself where it holds them exactly, and keeps a float16 copy only where it does not:

- ``IDMap,Flat``: ``IDMap2(IndexFlatIP)``, exact search, vectors read back by id;
- ``HNSW<M>``: ``IDMap2(IndexHNSWFlat)``; the graph's flat storage holds the float32 vectors, read back by id. HNSW
  cannot remove vectors, so removed ids become tombstones excluded at search time and dropped by ``rebuild``;
- ``IVF<n>,Flat``: ``IndexIVFFlat`` with a hash-table direct map (vectors read back by id from their lists);
- ``IVF<n>,PQ<m>`` (lossy codes): plus a float16 ``IDMap2(IndexScalarQuantizer fp16)`` store for the rescoring
  (``{name}.store.faiss``; half the bytes of a float32 copy, scores within ~1e-3).

Folders written before this layout (a float32 ``{name}.vectors.npy`` + ``{name}.ids.npy`` next to approximate
tables) still load; the next snapshot writes the new layout.
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


def new_fp16(dim: int) -> faiss.Index:
    return faiss.IndexIDMap2(faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16))


def id_array(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(
        np.fromiter(ids, dtype=np.int64) if not isinstance(ids, np.ndarray) else ids, np.int64
    )


def id_selector(ids: np.ndarray) -> tuple[Any, np.ndarray]:
    """An IDSelectorArray over ``ids`` (what an IVF direct map can remove) and the array it points into."""
    ids = id_array(ids)
    return faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids)), ids


class VectorTable:
    """Vectors of one kind. ``index``: what is searched; ``store``: what rescoring reads (the same object except
    for IVF-PQ, whose store is float16). An IVF table is trained on the first vectors ever added."""

    def __init__(self, spec: FactorySpec, dim: int, name: str):
        self.spec, self.dim, self.name = spec, dim, name
        self.index: faiss.Index | None = None if spec.kind == "ivf" else self._new_index(None)
        self.store: faiss.Index | None = new_fp16(dim) if self._lossy else self.index
        self.tombstones: set[int] = set()
        self.nlist = 0  # IVF: lists actually trained

    @property
    def _lossy(self) -> bool:
        return self.spec.kind == "ivf" and self.spec.codec != "Flat"

    # building
    def _new_index(self, train: np.ndarray | None) -> faiss.Index | None:
        spec = self.spec
        if spec.kind == "flat":
            return new_flat(self.dim)
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
        if not self._lossy:
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # vectors read back by id, removable
        self.nlist = nlist
        return index

    @property
    def count(self) -> int:
        n = int(self.store.ntotal) if self.store is not None else 0
        return n - len(self.tombstones)

    def ids(self) -> np.ndarray:
        """Every live id (unordered for IVF-Flat)."""
        if self.store is None:
            return np.zeros(0, np.int64)
        if isinstance(self.store, faiss.IndexIDMap2):
            ids = faiss.vector_to_array(self.store.id_map).astype(np.int64)
        else:
            ids = _ivf_ids(self.store)
        if self.tombstones:
            ids = ids[~np.isin(ids, id_array(self.tombstones))]
        return ids

    def ensure_trained(self, vecs: np.ndarray) -> None:
        """IVF: train on the first vectors ever added (before any other mutation, so a failure changes nothing)."""
        if self.spec.kind == "ivf" and self.index is None and len(vecs):
            self.index = self._new_index(vecs)
            if not self._lossy:
                self.store = self.index

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        if not len(ids):
            return
        self.ensure_trained(vecs)
        self.index.add_with_ids(vecs, ids)
        if self.store is not self.index:
            self.store.add_with_ids(vecs, ids)

    def remove(self, ids: np.ndarray) -> None:
        if not len(ids):
            return
        if self.spec.kind == "hnsw":
            self.tombstones.update(int(i) for i in ids)
            return
        sel, _keep = id_selector(ids)
        if self.index is not None:
            self.index.remove_ids(sel)
        if self.store is not None and self.store is not self.index:
            self.store.remove_ids(sel)

    def needs_compaction(self) -> bool:
        return len(self.tombstones) > COMPACT_FRACTION * max(self.count, 1)

    def rebuild(self) -> None:
        """Rebuild the approximate index from its own vectors (drops tombstones; IVF retrains on all vectors)."""
        if self.spec.exact:
            return
        ids = self.ids()
        vecs = self.vectors(ids) if len(ids) else np.zeros((0, self.dim), np.float32)
        self.tombstones = set()
        self.index = None
        self.index = self._new_index(vecs if len(vecs) or self.spec.kind != "ivf" else None)
        self.store = new_fp16(self.dim) if self._lossy else self.index
        if len(ids):
            self.add(ids, vecs)

    # reading
    def all_vectors(self) -> np.ndarray:
        """Every live vector, in the order of ``ids()``."""
        ids = self.ids()
        return self.vectors(ids) if len(ids) else np.zeros((0, self.dim), np.float32)

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
        if k <= 0 or self.index is None:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        keep: list[Any] = []  # faiss selectors hold raw pointers: keep the Python objects alive
        sel = None
        if allowed is not None:
            if self.tombstones:
                allowed = np.setdiff1d(allowed, id_array(self.tombstones))
            keep.append(id_array(allowed))
            sel = faiss.IDSelectorBatch(keep[-1])
        elif self.tombstones:
            keep.append(faiss.IDSelectorBatch(id_array(self.tombstones)))
            sel = faiss.IDSelectorNot(keep[-1])
        if self.spec.kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(ef_search, k))
        elif self.spec.kind == "ivf":
            params = faiss.SearchParametersIVF(sel=sel, nprobe=min(nprobe, self.nlist) or 1)
        else:
            params = faiss.SearchParameters(sel=sel) if sel is not None else None
        scores, ids = self.index.search(np.ascontiguousarray(q.reshape(1, -1), np.float32), k, params=params)
        valid = ids[0] >= 0
        return scores[0][valid], ids[0][valid]

    # persistence
    def frozen(self) -> dict[str, np.ndarray]:
        """The table's files as bytes (file name -> uint8 array): a consistent copy taken under the read lock and
        written to disk after it (``faiss.serialize_index`` is a memory copy)."""
        index = (
            self.index if self.index is not None else new_flat(self.dim)
        )  # untrained IVF: empty placeholder
        files = {f"{self.name}.faiss": faiss.serialize_index(index)}
        if self.store is not None and self.store is not self.index:
            files[f"{self.name}.store.faiss"] = faiss.serialize_index(self.store)
        if self.tombstones:
            files[f"{self.name}.tombstones.npy"] = _npy_bytes(id_array(sorted(self.tombstones)))
        return files

    @classmethod
    def read(cls, folder: Path, spec: FactorySpec, dim: int, name: str) -> VectorTable:
        t = cls(spec, dim, name)
        index = faiss.read_index(str(folder / f"{name}.faiss"))
        if index.d != dim:
            raise IndexFormatError(f"{folder}/{name}.faiss: dim {index.d}, manifest says {dim}")
        if spec.kind == "ivf":
            try:
                ivf = faiss.extract_index_ivf(index)
            except RuntimeError:  # the untrained placeholder
                index = None
            else:
                t.nlist = int(ivf.nlist)
                if not t._lossy and ivf.direct_map.type != faiss.DirectMap.Hashtable:
                    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # a folder of the old layout
        t.index = index
        t.store = t.index
        if t._lossy:
            t.store = new_fp16(dim)
            store = folder / f"{name}.store.faiss"
            old_ids, old_vecs = folder / f"{name}.ids.npy", folder / f"{name}.vectors.npy"
            if store.is_file():
                t.store = faiss.read_index(str(store))
            elif old_vecs.is_file():  # the old layout's float32 copy
                vecs, ids = np.load(old_vecs), np.load(old_ids)
                if vecs.shape != (len(ids), dim):
                    raise IndexFormatError(f"{old_vecs}: shape {vecs.shape}, expected ({len(ids)}, {dim})")
                t.store.add_with_ids(np.ascontiguousarray(vecs, np.float32), ids.astype(np.int64))
        tomb = folder / f"{name}.tombstones.npy"
        if tomb.is_file():
            t.tombstones = {int(i) for i in np.load(tomb)}
        return t


def _ivf_ids(index: faiss.Index) -> np.ndarray:
    invlists = faiss.extract_index_ivf(index).invlists
    parts = [
        faiss.rev_swig_ptr(invlists.get_ids(lst), invlists.list_size(lst)).copy()
        for lst in range(invlists.nlist)
        if invlists.list_size(lst)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def _npy_bytes(a: np.ndarray) -> np.ndarray:
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    return np.frombuffer(buf.getvalue(), np.uint8)
