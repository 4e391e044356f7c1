"""The index: image vectors (CM), caption vectors (CL), backbone features and metadata, keyed by int64 ids, in one
folder. Torch-free.

Folder layout (``xlsearch-index/1``)::

    manifest.json         format, bundle_hash, dim, cl_dim, metric, factory, cl_space, count, captions, version...
    images.faiss          image vectors (int64 ids)                    -> CM
    captions.faiss        first-caption vectors in the bundle's CL space -> CL (only captioned images)
    {images,captions}.store.faiss       IVF-PQ only: float16 vectors for the exact rescoring
    {images,captions}.tombstones.npy    HNSW only: ids removed but still in the graph
    features.f16.npy / features.ids.npy backbone features (float16, memory-mapped) for Tag/Caption by id
    metadata.sqlite       int id -> string id, uri, captions; tags table (int id, position, tag)
    changes.log           changes since the snapshot (``changelog``), replayed by ``load``
    report.json           optional (written by the batch indexer)

The parts: ``key`` (what the index must share with its bundle), ``factory`` (factory strings), ``table`` (one table
of vectors, one copy), ``features`` (memory-mapped), ``metadata`` (SQLite + in-memory bookkeeping), ``changelog``
and ``snapshot`` (persistence), ``store`` (the durable live index a server changes). IVF tables are trained on the
first vectors added (``auto`` picks nlist from that count); ``rebuild()`` retrains.

``ImageIndex`` is not thread-safe; ``xlsearch.search.engine.SearchEngine`` guards it with a readers-writer lock.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.common.atomic import recover_folder, remove_stale_temps
from xlsearch.index.changelog import Change, checked_add, read_changes
from xlsearch.index.factory import DEFAULT_FACTORY, parse_factory
from xlsearch.index.features import FeatureStore
from xlsearch.index.key import BundleKey, IndexFormatError, IndexMismatchError, check_compatible
from xlsearch.index.metadata import ImageMeta, MetadataState, read_metadata
from xlsearch.index.snapshot import (
    INDEX_FORMAT,
    METADATA,
    REPORT,
    Frozen,
    index_key,
    read_index_key,
    read_manifest,
    write_snapshot,
)
from xlsearch.index.table import VectorTable, id_array

__all__ = [
    "DEFAULT_EF_SEARCH",
    "DEFAULT_FACTORY",
    "DEFAULT_NPROBE",
    "INDEX_FORMAT",
    "BundleKey",
    "ImageIndex",
    "ImageMeta",
    "IndexFormatError",
    "IndexMismatchError",
    "read_index_key",
]


# Search parameters of approximate indexes (stored in the manifest; `xlsearch index` / `xlsearch serve` flags).
# docs/benchmarks.md records the recall@10 each gives at 100k and 1M vectors.
DEFAULT_NPROBE = 16
DEFAULT_EF_SEARCH = 128


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class ImageIndex:
    """Image + caption vectors and metadata for one bundle. Build with ``create`` or ``load``."""

    def __init__(self, key: BundleKey, factory: str = DEFAULT_FACTORY):
        self.key = key
        self.spec = parse_factory(factory)
        self.images = VectorTable(self.spec, key.dim, "images")
        self.captions = VectorTable(self.spec, key.cl_dim, "captions")
        self.features = FeatureStore(key.feature_dim)
        self._state = MetadataState()
        self.version = 0
        self.next_id = 0
        self.uid = uuid.uuid4().hex
        self.created = self.updated = _now()
        self.nprobe = DEFAULT_NPROBE  # IVF lists visited per query
        self.ef_search = DEFAULT_EF_SEARCH  # HNSW candidate list size (raised to k when k is larger)
        self.report: dict[str, Any] | None = None  # the batch indexer's report.json, kept across saves
        self.snapshot_version = -1  # the version the folder's snapshot holds (-1: none)
        # folders the batch indexer read the images from (absolute, resolved)
        self.source_roots: list[str] = []
        self.folder: Path | None = None  # where it was last loaded from / saved to

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, bundle: Any, factory: str = DEFAULT_FACTORY) -> ImageIndex:
        """An empty index for ``bundle`` (a Bundle, its manifest dict, or a BundleKey)."""
        return cls(BundleKey.of(bundle), factory)

    @classmethod
    def load(
        cls, folder: str | os.PathLike[str], bundle: Any | None = None, replay: bool = True
    ) -> ImageIndex:
        """Read an index folder: the snapshot, then (``replay``) every logged change after it. With ``bundle``
        given, refuse (IndexMismatchError) a folder built for another bundle. Reads only: a torn log tail is
        skipped here and cut off by the writer (``store.IndexStore``)."""
        folder = Path(folder)
        recover_folder(folder)
        remove_stale_temps(folder)
        m = read_manifest(folder)
        key = index_key(m)
        if bundle is not None:
            check_compatible(key, BundleKey.of(bundle), folder)
        self = cls(key, m["factory"])
        self.images = VectorTable.read(folder, self.spec, key.dim, "images")
        self.captions = VectorTable.read(folder, self.spec, key.cl_dim, "captions")
        self.features = FeatureStore.read(folder, key.feature_dim)
        for int_id, meta in read_metadata(folder / METADATA).items():
            self._state.put(int_id, meta)
        self.version, self.next_id, self.uid = int(m["version"]), int(m["next_id"]), m["uid"]
        self.created, self.updated = m["created"], m["updated"]
        self.nprobe = int(m.get("search_params", {}).get("nprobe", self.nprobe))
        self.ef_search = int(m.get("search_params", {}).get("ef_search", self.ef_search))
        self.source_roots = [str(r) for r in m.get("source_roots", [])]
        if (folder / REPORT).is_file():
            self.report = json.loads((folder / REPORT).read_text(encoding="utf-8"))
        self._check_consistent(folder, m)
        self.snapshot_version = self.version
        if replay:
            for change in read_changes(folder, self.version):
                self.apply(change)
        self.folder = folder
        return self

    def _check_consistent(self, folder: Path, m: Mapping[str, Any]) -> None:
        n_cap = len(self._state.meta) - len(self._state.uncaptioned)
        problems = []
        if not (m["count"] == self.images.count == len(self._state.meta)):
            problems.append(
                f"count {m['count']}, images.faiss {self.images.count}, metadata {len(self._state.meta)}"
            )
        if not (m["captions"] == self.captions.count == n_cap):
            problems.append(
                f"captions {m['captions']}, captions.faiss {self.captions.count}, metadata {n_cap}"
            )
        if m.get("features", 0) != self.features.count or self.features.count > self.images.count:
            problems.append(f"features {m.get('features', 0)}, features.faiss {self.features.count}")
        if problems:
            raise IndexFormatError(f"{folder}: inconsistent index: {'; '.join(problems)}")

    # -- identity ----------------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.key.dim

    @property
    def cl_dim(self) -> int:
        return self.key.cl_dim

    @property
    def bundle_hash(self) -> str:
        return self.key.bundle_hash

    @property
    def cl_space(self) -> str:
        return self.key.cl_space

    @property
    def factory(self) -> str:
        return self.spec.name

    @property
    def exact(self) -> bool:
        """True when top-k lists are exact (Flat): the search engine's threshold rule is then exact too."""
        return self.spec.exact

    @property
    def index_hash(self) -> str:
        """Changes with every version of every index (cheap: no hashing of vector files)."""
        return hashlib.sha256(f"{self.uid}:{self.version}".encode()).hexdigest()[:16]

    @property
    def count(self) -> int:
        return len(self._state.meta)

    @property
    def caption_count(self) -> int:
        return self.count - len(self._state.uncaptioned)

    def check_compatible(self, bundle: Any) -> None:
        check_compatible(self.key, BundleKey.of(bundle), self.folder)

    # -- mutation ----------------------------------------------------------------------------------------------
    def add(
        self,
        metas: Sequence[ImageMeta],
        image_vectors: np.ndarray,
        caption_vectors: np.ndarray | Sequence[np.ndarray | None] | None = None,
        features: np.ndarray | None = None,
    ) -> np.ndarray:
        """Add images; returns their new int ids. An id already present is replaced (new int id, old vectors
        removed); within one call the last occurrence of an id wins. ``caption_vectors`` is an [N,D] array (every
        image captioned), a list with None for images without a caption, or None (no captions). A caption vector
        must be given exactly for the metas that have captions (``captions[0]`` is what it encodes). ``features``
        [N, feature_dim]: the backbone features Tag/Caption by id read (ignored by an index without features)."""
        change = self.check_add(metas, image_vectors, caption_vectors, features)
        img, caps, feats = change.images, change.captions, change.features
        assert img is not None and caps is not None
        last = {m.id: i for i, m in enumerate(metas)}
        keep = sorted(last.values())
        if not keep:
            return np.zeros(0, np.int64)
        replaced = [self._state.by_id[metas[i].id] for i in keep if metas[i].id in self._state.by_id]
        int_ids = np.arange(self.next_id, self.next_id + len(keep), dtype=np.int64)
        cap_rows = [j for j, i in enumerate(keep) if caps[i] is not None]
        cap_vecs = (
            np.stack([caps[keep[j]] for j in cap_rows])
            if cap_rows
            else np.zeros((0, self.cl_dim), np.float32)
        )
        self._remove_int(replaced)  # check_add validated and trained: nothing below raises
        self.images.add(int_ids, img[keep])
        self.captions.add(int_ids[cap_rows], cap_vecs)
        if feats is not None:
            self.features.add(int_ids, feats[keep])
        for j, i in enumerate(keep):
            self._state.put(int(int_ids[j]), metas[i])
        self.next_id += len(keep)
        self._touch()
        return int_ids

    def check_add(
        self,
        metas: Sequence[ImageMeta],
        image_vectors: np.ndarray,
        caption_vectors: np.ndarray | Sequence[np.ndarray | None] | None = None,
        features: np.ndarray | None = None,
    ) -> Change:
        """Validate an ``add`` without changing anything but this: an IVF table that was never trained is trained
        here (so the change cannot fail once logged). Returns the normalised change (what the log records)."""
        change = checked_add(
            metas, image_vectors, caption_vectors, features, self.dim, self.cl_dim, self.key.feature_dim
        )
        rows = change.captions or []
        last = sorted({m.id: i for i, m in enumerate(metas)}.values())
        cap_rows = [rows[i] for i in last if rows[i] is not None]
        self.images.ensure_trained(change.images[last])  # type: ignore[index]
        self.captions.ensure_trained(
            np.stack(cap_rows) if cap_rows else np.zeros((0, self.cl_dim), np.float32)
        )
        return change

    def apply(self, change: Change) -> None:
        """Apply a logged change (replay); it must land on its own version (``seq``)."""
        if change.op == "add":
            self.add(change.metas or [], change.images, change.captions, change.features)  # type: ignore[arg-type]
        else:
            self.remove(change.ids or [])
        if change.seq and self.version != change.seq:
            raise IndexFormatError(
                f"{self.folder}: change {change.seq} of the log left the index at version {self.version}"
            )

    def remove(self, ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """Remove images by string id -> (removed, not_found), both in the given order (duplicates once)."""
        removed, missing = [], []
        for sid in dict.fromkeys(ids):
            (removed if sid in self._state.by_id else missing).append(sid)
        if removed:
            self._remove_int([self._state.by_id[s] for s in removed])
            self._touch()
        return removed, missing

    def _remove_int(self, int_ids: Sequence[int]) -> None:
        if not int_ids:
            return
        arr = id_array(int_ids)
        captioned = id_array(i for i in int_ids if i not in self._state.uncaptioned)
        self.images.remove(arr)
        self.captions.remove(captioned)
        self.features.remove(arr)
        for i in int_ids:
            self._state.drop(int(i))

    def needs_compaction(self) -> bool:
        return self.images.needs_compaction() or self.captions.needs_compaction()

    def compact(self) -> None:
        """Drop HNSW tombstones by rebuilding the graphs (a mutation: run it under the writer lock)."""
        for t in (self.images, self.captions):
            if t.tombstones:
                t.rebuild()

    def rebuild(self) -> None:
        """Rebuild approximate tables from the exact stores (IVF: retrain nlist/auto on all current vectors)."""
        self.images.rebuild()
        self.captions.rebuild()
        self._touch()

    def _touch(self) -> None:
        self.version += 1
        self.updated = _now()

    # -- queries -----------------------------------------------------------------------------------------------
    def search_images(
        self, q: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, int ids) of image vectors for one query vector [D] (CM)."""
        return self.images.search(q, k, allowed, self.nprobe, self.ef_search)

    def search_captions(
        self, q: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, int ids) of caption vectors (CL); only captioned images can appear."""
        return self.captions.search(q, k, allowed, self.nprobe, self.ef_search)

    def image_features(self, int_ids: np.ndarray) -> np.ndarray | None:
        """Stored backbone features [n, feature_dim] (float16 precision), or None when any of them has none."""
        ids = id_array(int_ids)
        if not self.features.has(ids):
            return None
        return self.features.vectors(ids)

    def image_vectors(self, int_ids: np.ndarray) -> np.ndarray:
        """Stored (exact, float32) image vectors. Raises KeyError/RuntimeError for unknown ids."""
        return self.images.vectors(int_ids)

    def caption_vectors(self, int_ids: np.ndarray) -> np.ndarray:
        """Stored caption vectors; every id must be captioned (see ``has_caption``)."""
        return self.captions.vectors(int_ids)

    def metadata(self, int_ids: Iterable[int]) -> list[ImageMeta]:
        return [self._state.meta[int(i)] for i in int_ids]

    def has_caption(self, int_ids: np.ndarray) -> np.ndarray:
        unc = self._state.uncaptioned
        return np.fromiter((int(i) not in unc for i in int_ids), dtype=bool, count=len(int_ids))

    def int_id(self, sid: str) -> int | None:
        return self._state.by_id.get(sid)

    def int_ids(self) -> np.ndarray:
        """Every live int id (sorted)."""
        return np.sort(id_array(self._state.meta))

    @property
    def uncaptioned_count(self) -> int:
        return len(self._state.uncaptioned)

    def uncaptioned_ids(self) -> np.ndarray:
        return np.sort(id_array(self._state.uncaptioned))

    def ids_with_tags(self, tags: Iterable[str]) -> np.ndarray:
        """Sorted int ids of images carrying every tag in ``tags`` (all images when ``tags`` is empty)."""
        tags = list(dict.fromkeys(tags))
        if not tags:
            return self.int_ids()
        sets = sorted((self._state.tags.get(t, set()) for t in tags), key=len)
        common = set(sets[0]).intersection(*sets[1:])
        return np.sort(id_array(common))

    def tag_counts(self) -> dict[str, int]:
        return {t: len(s) for t, s in self._state.tags.items()}

    # -- persistence -------------------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        return {
            "format": INDEX_FORMAT,
            "bundle_hash": self.bundle_hash,
            "dim": self.dim,
            "cl_dim": self.cl_dim,
            "metric": "inner_product",
            "factory": self.factory,
            "exact": self.exact,
            "cl_space": self.cl_space,
            "count": self.count,
            "captions": self.caption_count,
            "feature_dim": self.key.feature_dim,
            "features": self.features.count,
            "version": self.version,
            "next_id": self.next_id,
            "uid": self.uid,
            "created": self.created,
            "updated": self.updated,
            "search_params": {"nprobe": self.nprobe, "ef_search": self.ef_search},
            "ivf_nlist": {"images": self.images.nlist, "captions": self.captions.nlist}
            if self.spec.kind == "ivf"
            else None,
            "tombstones": {"images": len(self.images.tombstones), "captions": len(self.captions.tombstones)},
            "source_roots": self.source_roots,
        }

    def freeze(self) -> Frozen:
        """A consistent copy for a snapshot (under the read lock; memory copies only, O(changes) for features)."""
        files: dict[str, np.ndarray] = {}
        for t in (self.images, self.captions):
            files.update(t.frozen())
        return Frozen(
            self.version,
            self.manifest(),
            files,
            dict(self._state.meta),
            self.features.freeze(),
            self.report,
        )

    def save(self, folder: str | os.PathLike[str] | None = None) -> Path:
        """Write a full snapshot atomically (``snapshot.write_snapshot``: a temp folder next to ``folder`` is
        filled, fsync'd and swapped in; the new folder has an empty change log). Needs exclusive access (the
        features store re-maps its new file); a live server snapshots through ``store.IndexStore`` instead."""
        target = Path(folder) if folder is not None else self.folder
        if target is None:
            raise ValueError("save: no folder given and the index was never loaded or saved")
        frozen = self.freeze()
        self.folder = write_snapshot(target, frozen, self.features)
        self.features.rebase(frozen.features, self.folder)
        self.snapshot_version = frozen.version
        return self.folder
