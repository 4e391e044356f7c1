"""The backbone features of the indexed images (float16), read only by Tag/Caption by id, never searched.

At 1M images x 1280 dims they are 2.4 GiB, more than both vector tables of a 256-d bundle together, and almost
never read: so they stay on disk. A snapshot writes ``features.f16.npy`` [n, F] (rows in ``features.ids.npy``
order, ids ascending) and the store memory-maps it; rows added since (``delta``) are held in memory until the next
snapshot, removed base rows are remembered in ``removed``. Reading one feature touches one page of the file.

Folders of the old layout (``features.faiss``, an in-memory fp16 faiss store) still load; the next snapshot writes
the memory-mapped layout.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from xlsearch.index.key import IndexFormatError
from xlsearch.index.table import id_array

DATA, IDS, OLD = "features.f16.npy", "features.ids.npy", "features.faiss"
_CHUNK = 8192  # rows copied at a time when a snapshot writes the file


@dataclass
class FrozenFeatures:
    """A consistent view of the store for a snapshot: the (immutable) base + what changed since, copied."""

    base: np.ndarray
    base_ids: np.ndarray
    removed: set[int]
    delta: dict[int, np.ndarray]
    dim: int

    def live_ids(self) -> np.ndarray:
        keep = (
            self.base_ids[~np.isin(self.base_ids, id_array(self.removed))] if self.removed else self.base_ids
        )
        return np.sort(np.concatenate([keep, id_array(self.delta)]))

    def rows(self) -> Iterator[np.ndarray]:
        """The live rows in ascending id order, a chunk at a time (base rows are read from the file)."""
        ids = self.live_ids()
        pos = np.searchsorted(self.base_ids, ids)
        for start in range(0, len(ids), _CHUNK):
            part, p = ids[start : start + _CHUNK], pos[start : start + _CHUNK]
            out = np.empty((len(part), self.dim), np.float16)
            fresh = np.fromiter((i in self.delta for i in part.tolist()), bool, count=len(part))
            if (~fresh).any():
                out[~fresh] = self.base[p[~fresh]]
            if fresh.any():
                out[fresh] = np.stack([self.delta[i] for i in part[fresh].tolist()])
            yield out


@dataclass
class FeatureStore:
    dim: int
    base: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float16))
    base_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # ascending
    removed: set[int] = field(default_factory=set)  # base ids no longer live
    delta: dict[int, np.ndarray] = field(default_factory=dict)  # rows added since the base was written

    @property
    def count(self) -> int:
        return len(self.base_ids) - len(self.removed) + len(self.delta) if self.dim else 0

    def _in_base(self, ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.base_ids, ids)
        pos[pos >= len(self.base_ids)] = 0
        hit = self.base_ids[pos] == ids if len(self.base_ids) else np.zeros(len(ids), bool)
        if self.removed:
            hit &= ~np.isin(ids, id_array(self.removed))
        return hit

    def has(self, ids: np.ndarray) -> bool:
        """True when every id has a feature."""
        ids = id_array(ids)
        if not self.dim:
            return False
        in_delta = np.fromiter((int(i) in self.delta for i in ids), bool, count=len(ids))
        return bool((in_delta | self._in_base(ids)).all())

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        if not self.dim:
            return
        for i, v in zip(id_array(ids).tolist(), np.asarray(vecs, np.float16), strict=True):
            self.delta[i] = v

    def remove(self, ids: np.ndarray) -> None:
        if not self.dim:
            return
        for i in id_array(ids).tolist():
            if self.delta.pop(i, None) is None:
                self.removed.add(i)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        ids = id_array(ids)
        out = np.empty((len(ids), self.dim), np.float32)
        pos = np.searchsorted(self.base_ids, ids)
        for n, i in enumerate(ids.tolist()):
            row = self.delta.get(i)
            out[n] = row if row is not None else self.base[pos[n]]
        return out

    # snapshots
    def freeze(self) -> FrozenFeatures:
        """Under the read lock: O(changes since the base), the base itself is not copied."""
        return FrozenFeatures(self.base, self.base_ids, set(self.removed), dict(self.delta), self.dim)

    def write(self, frozen: FrozenFeatures, folder: Path) -> None:
        """Write the frozen view as the memory-mapped layout (no lock held: the base is never modified)."""
        if not self.dim:
            return
        ids = frozen.live_ids()
        out = np.lib.format.open_memmap(
            folder / DATA, mode="w+", dtype=np.float16, shape=(len(ids), self.dim)
        )
        start = 0
        for rows in frozen.rows():
            out[start : start + len(rows)] = rows
            start += len(rows)
        out.flush()
        del out
        np.save(folder / IDS, ids)

    def rebase(self, frozen: FrozenFeatures, folder: Path) -> None:
        """After a snapshot of ``frozen`` was swapped in at ``folder`` (under the write lock): map the new file and
        keep only the changes made since the freeze."""
        if not self.dim:
            return
        new = FeatureStore.read(folder, self.dim)
        added_since = {i: v for i, v in self.delta.items() if i not in frozen.delta}
        gone_since = (self.removed - frozen.removed) | {i for i in frozen.delta if i not in self.delta}
        self.base, self.base_ids = new.base, new.base_ids
        self.removed, self.delta = gone_since, added_since

    @classmethod
    def read(cls, folder: Path, dim: int) -> FeatureStore:
        t = cls(dim)
        if not dim:
            return t
        if (folder / DATA).is_file():
            base = np.load(folder / DATA, mmap_mode="r")
            ids = np.load(folder / IDS)
            if base.shape != (len(ids), dim):
                raise IndexFormatError(f"{folder / DATA}: shape {base.shape}, expected ({len(ids)}, {dim})")
            t.base, t.base_ids = base, ids.astype(np.int64)
        elif (folder / OLD).is_file():
            store = faiss.read_index(str(folder / OLD))
            if store.d != dim:
                raise IndexFormatError(f"{folder / OLD}: dim {store.d}, manifest says feature_dim {dim}")
            ids = faiss.vector_to_array(store.id_map).astype(np.int64)
            order = np.argsort(ids)
            vecs = store.reconstruct_batch(ids[order]) if len(ids) else np.zeros((0, dim), np.float32)
            t.base, t.base_ids = vecs.astype(np.float16), ids[order]
        else:
            t.base = np.zeros((0, dim), np.float16)
        return t
