"""The index folder: image vectors (CM), caption vectors (CL) and metadata, keyed by int64 ids. Torch-free.

Folder layout (``xlsearch-index/1``)::

    manifest.json         format, bundle_hash, dim, cl_dim, metric, factory, cl_space, count, captions, version...
    images.faiss          image vectors (int64 ids)                    -> CM
    captions.faiss        first-caption vectors in the bundle's CL space -> CL (only captioned images)
    features.faiss        backbone features (float16, int64 ids) for Tag/Caption by id; bundles with a feature output
    metadata.sqlite       int id -> string id, uri, captions; tags table (int id, position, tag)
    {images,captions}.vectors.npy / .ids.npy    approximate factories only: exact float32 vectors
    {images,captions}.tombstones.npy            HNSW only: ids removed but still in the graph
    report.json           optional (written by the batch indexer)

Factories: ``IDMap,Flat`` (exact, default), ``HNSW{M}``, ``IVF{nlist|auto},{codec}`` (codec ``Flat``, ``PQ{m}``,
``PQ{m}x{bits}``, ``SQ8``, ...). Flat tables reconstruct stored vectors from the index itself; approximate tables keep
a second, exact IDMap2/Flat "store" so search results can be rescored exactly (2x vector memory). HNSW cannot remove
vectors: removed ids become tombstones excluded by an ``IDSelector`` at search time and dropped by ``compact()``.
IVF tables are trained on the first vectors added (``auto`` picks nlist from that count); ``rebuild()`` retrains.

``ImageIndex`` is not thread-safe; ``xlsearch.search.engine.SearchEngine`` guards it with a readers-writer lock. ``save``
does not mutate the index, so it may run under a read lock.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import tempfile
import uuid
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from xlsearch.errors import FailedPrecondition

__all__ = [
    "DEFAULT_FACTORY",
    "INDEX_FORMAT",
    "BundleKey",
    "FactorySpec",
    "ImageIndex",
    "ImageMeta",
    "IndexFormatError",
    "IndexMismatchError",
    "parse_factory",
]

log = logging.getLogger(__name__)

INDEX_FORMAT = "xlsearch-index/1"
DEFAULT_FACTORY = "IDMap,Flat"
MANIFEST = "manifest.json"
METADATA = "metadata.sqlite"
REPORT = "report.json"
TABLES = ("images", "captions")
# Compact an HNSW table (rebuild the graph) once tombstones exceed this fraction of live vectors.
COMPACT_FRACTION = 0.1


class IndexFormatError(FailedPrecondition):
    """An index folder that is missing, incomplete or inconsistent."""


class IndexMismatchError(IndexFormatError):
    """An index folder built with a different bundle (hash, dim or CL space) than the one serving it."""


# -- bundle identity -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BundleKey:
    """What an index must agree on with the bundle that serves it. ``dim`` is the image (CM) space, ``cl_dim`` the
    CL space: equal in the visual space, the sentence encoder's dim in the sentence space."""

    bundle_hash: str
    dim: int
    cl_space: str
    cl_dim: int
    # Backbone feature the bundle's tagger/captioner read (0: the image encoder has no feature output). Derived
    # from the bundle, so not compared: an index built without features just cannot Tag/Caption by id.
    feature_dim: int = field(default=0, compare=False)

    @classmethod
    def of(cls, bundle: Any) -> BundleKey:
        """From a loaded ``Bundle``, a bundle manifest dict, or a ``BundleKey``."""
        if isinstance(bundle, BundleKey):
            return bundle
        if isinstance(bundle, Mapping):
            cl_space = (bundle.get("fusion") or {}).get("cl_space", "visual")
            dim = int(bundle["dim"])
            cl_dim = _manifest_cl_dim(bundle, cl_space, dim)
            return cls(str(bundle["content_hash"]), dim, cl_space, cl_dim, _manifest_feature_dim(bundle))
        dim, cl_space = int(bundle.dim), str(bundle.cl_space)
        cl_dim = getattr(bundle, "cl_dim", None)
        if cl_dim is None and cl_space == "visual":
            cl_dim = dim
        if cl_dim is None:  # Bundle has no cl_dim attribute: probe the CL encoder once per bundle object
            try:
                cl_dim = _PROBED_CL_DIM[bundle]
            except (KeyError, TypeError):
                cl_dim = int(bundle.cl_vectors(["dimension probe"], "en").shape[1])
                try:
                    _PROBED_CL_DIM[bundle] = cl_dim
                except TypeError:  # not weak-referenceable: just don't cache
                    pass
        feature_dim = _manifest_feature_dim(getattr(bundle, "manifest", None) or {})
        return cls(str(bundle.content_hash), dim, cl_space, int(cl_dim), feature_dim)


def _manifest_feature_dim(manifest: Mapping[str, Any]) -> int:
    image = manifest.get("image_encoder") or {}
    if not image.get("feature_output"):
        return 0
    return int(image.get("feature_dim") or 0)


_PROBED_CL_DIM: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def _manifest_cl_dim(manifest: Mapping[str, Any], cl_space: str, dim: int) -> int:
    if cl_space == "visual":
        return dim
    spec = manifest.get("sentence_encoder") or {}
    if "dim" in spec:
        return int(spec["dim"])
    from xlsearch.encode.sentence import build_sentence_encoder

    return int(build_sentence_encoder(spec).dim)


# -- factories -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FactorySpec:
    """A parsed factory string. ``kind`` is flat | hnsw | ivf; ``nlist`` None means auto."""

    kind: str
    name: str  # normalised factory string, recorded in the manifest
    hnsw_m: int = 0
    nlist: int | None = None
    codec: str = "Flat"

    @property
    def exact(self) -> bool:
        return self.kind == "flat"


_HNSW = re.compile(r"^(?:IDMap2?,)?HNSW(\d+)(?:,Flat)?$")
_IVF = re.compile(r"^(?:IDMap2?,)?IVF(\d+|auto),([A-Za-z][A-Za-z0-9_x]*)$")


def parse_factory(factory: str) -> FactorySpec:
    f = factory.replace(" ", "")
    if f in ("Flat", "IDMap,Flat", "IDMap2,Flat"):
        return FactorySpec("flat", DEFAULT_FACTORY)
    if m := _HNSW.match(f):
        return FactorySpec("hnsw", f"HNSW{int(m[1])}", hnsw_m=int(m[1]))
    if m := _IVF.match(f):
        nlist = None if m[1] == "auto" else int(m[1])
        if nlist is not None and nlist < 1:
            raise ValueError(f"factory {factory!r}: nlist must be >= 1")
        return FactorySpec("ivf", f"IVF{m[1]},{m[2]}", nlist=nlist, codec=m[2])
    raise ValueError(
        f"unsupported factory {factory!r}; use IDMap,Flat | HNSW<M> | IVF<nlist|auto>,Flat | IVF<nlist|auto>,PQ<m>"
    )


def auto_nlist(n: int) -> int:
    """~4*sqrt(n) lists, but at least 39 training points per list (faiss' k-means minimum)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


# -- one table of vectors --------------------------------------------------------------------------------------
def _new_flat(dim: int) -> faiss.Index:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def _id_array(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(
        np.fromiter(ids, dtype=np.int64) if not isinstance(ids, np.ndarray) else ids, np.int64
    )


class _Table:
    """Vectors of one kind. ``store`` is an exact IDMap2/Flat (the search index itself for flat factories)."""

    def __init__(self, spec: FactorySpec, dim: int, name: str):
        self.spec, self.dim, self.name = spec, dim, name
        self.store = _new_flat(dim)
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
        return self.store.reconstruct_batch(_id_array(ids))

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
                allowed = np.setdiff1d(allowed, _id_array(self.tombstones))
            sel = faiss.IDSelectorBatch(_id_array(allowed))
        elif self.tombstones:
            keep.append(faiss.IDSelectorBatch(_id_array(self.tombstones)))
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
                np.save(folder / f"{self.name}.tombstones.npy", _id_array(sorted(self.tombstones)))

    def _ann_or_empty(self) -> faiss.Index:
        # An IVF table that never saw a vector has no trained index yet; persist an empty flat placeholder.
        return self.ann if self.ann is not None else _new_flat(self.dim)

    @classmethod
    def read(cls, folder: Path, spec: FactorySpec, dim: int, name: str) -> _Table:
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


class _FeatureStore:
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
            self.store.add_with_ids(np.ascontiguousarray(vecs, np.float32), _id_array(ids))

    def remove(self, ids: np.ndarray) -> None:
        if self.store is not None and len(ids):
            self.store.remove_ids(faiss.IDSelectorBatch(_id_array(ids)))

    def ids(self) -> np.ndarray:
        if self.store is None:
            return np.zeros(0, np.int64)
        return faiss.vector_to_array(self.store.id_map).astype(np.int64)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        return self.store.reconstruct_batch(_id_array(ids))

    def write(self, folder: Path) -> None:
        if self.store is not None:
            faiss.write_index(self.store, str(folder / self.FILE))

    @classmethod
    def read(cls, folder: Path, dim: int) -> _FeatureStore:
        t = cls(dim)
        path = folder / cls.FILE
        if dim and path.is_file():
            store = faiss.read_index(str(path))
            if store.d != dim:
                raise IndexFormatError(f"{path}: dim {store.d}, manifest says feature_dim {dim}")
            t.store = store
        return t


# -- metadata --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageMeta:
    """What the index knows about an image besides its vectors. ``captions[0]`` is the CL description."""

    id: str
    uri: str = ""
    captions: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "captions", tuple(self.captions))
        object.__setattr__(self, "tags", tuple(self.tags))
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"image id must be a non-empty string, got {self.id!r}")

    @property
    def caption(self) -> str:
        return self.captions[0] if self.captions else ""

    @property
    def has_caption(self) -> bool:
        return bool(self.captions)


_SCHEMA = """
CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images (int_id INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, uri TEXT NOT NULL, captions TEXT NOT NULL);
CREATE TABLE tags (int_id INTEGER NOT NULL REFERENCES images(int_id), pos INTEGER NOT NULL, tag TEXT NOT NULL,
                   PRIMARY KEY (int_id, pos));
CREATE INDEX tags_by_tag ON tags (tag, int_id);
"""


def _write_metadata(path: Path, metas: Mapping[int, ImageMeta]) -> None:
    con = sqlite3.connect(path)
    try:
        con.executescript(_SCHEMA)
        con.execute("INSERT INTO info VALUES ('format', ?)", (INDEX_FORMAT,))
        con.executemany(
            "INSERT INTO images VALUES (?, ?, ?, ?)",
            ((i, m.id, m.uri, json.dumps(list(m.captions), ensure_ascii=False)) for i, m in metas.items()),
        )
        con.executemany(
            "INSERT INTO tags VALUES (?, ?, ?)",
            ((i, p, t) for i, m in metas.items() for p, t in enumerate(m.tags)),
        )
        con.commit()
    finally:
        con.close()


def _read_metadata(path: Path) -> dict[int, ImageMeta]:
    if not path.is_file():
        raise IndexFormatError(f"{path}: missing")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tags: dict[int, list[str]] = {}
        for int_id, tag in con.execute("SELECT int_id, tag FROM tags ORDER BY int_id, pos"):
            tags.setdefault(int_id, []).append(tag)
        return {
            int_id: ImageMeta(sid, uri, tuple(json.loads(caps)), tuple(tags.get(int_id, ())))
            for int_id, sid, uri, caps in con.execute("SELECT int_id, id, uri, captions FROM images")
        }
    except sqlite3.DatabaseError as e:
        raise IndexFormatError(f"{path}: {e}") from None
    finally:
        con.close()


# -- the index -------------------------------------------------------------------------------------------------
def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


@dataclass
class _State:
    """Bookkeeping kept in memory next to the faiss tables."""

    meta: dict[int, ImageMeta] = field(default_factory=dict)
    by_id: dict[str, int] = field(default_factory=dict)
    tags: dict[str, set[int]] = field(default_factory=dict)
    uncaptioned: set[int] = field(default_factory=set)

    def put(self, int_id: int, m: ImageMeta) -> None:
        self.meta[int_id], self.by_id[m.id] = m, int_id
        for t in m.tags:
            self.tags.setdefault(t, set()).add(int_id)
        if not m.has_caption:
            self.uncaptioned.add(int_id)

    def drop(self, int_id: int) -> ImageMeta:
        m = self.meta.pop(int_id)
        del self.by_id[m.id]
        for t in m.tags:
            members = self.tags[t]
            members.discard(int_id)
            if not members:
                del self.tags[t]
        self.uncaptioned.discard(int_id)
        return m


class ImageIndex:
    """Image + caption vectors and metadata for one bundle. Build with ``create`` or ``load``."""

    def __init__(self, key: BundleKey, factory: str = DEFAULT_FACTORY):
        self.key = key
        self.spec = parse_factory(factory)
        self.images = _Table(self.spec, key.dim, "images")
        self.captions = _Table(self.spec, key.cl_dim, "captions")
        self.features = _FeatureStore(key.feature_dim)
        self._state = _State()
        self.version = 0
        self.next_id = 0
        self.uid = uuid.uuid4().hex
        self.created = self.updated = _now()
        self.nprobe = 16  # IVF lists visited per query
        self.ef_search = 128  # HNSW candidate list size (raised to k when k is larger)
        self.report: dict[str, Any] | None = None  # the batch indexer's report.json, kept across saves
        self.folder: Path | None = None  # where it was last loaded from / saved to

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, bundle: Any, factory: str = DEFAULT_FACTORY) -> ImageIndex:
        """An empty index for ``bundle`` (a Bundle, its manifest dict, or a BundleKey)."""
        return cls(BundleKey.of(bundle), factory)

    @classmethod
    def load(cls, folder: str | os.PathLike[str], bundle: Any | None = None) -> ImageIndex:
        """Read an index folder; with ``bundle`` given, refuse (IndexMismatchError) one built for another bundle."""
        folder = Path(folder)
        _recover(folder)
        _remove_stale_temps(folder)
        try:
            m = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise IndexFormatError(f"{folder}: no {MANIFEST} (not an index folder?)") from None
        except json.JSONDecodeError as e:
            raise IndexFormatError(f"{folder / MANIFEST}:{e.lineno}: broken JSON: {e.msg}") from None
        if m.get("format") != INDEX_FORMAT:
            raise IndexFormatError(f"{folder}: format {m.get('format')!r}, expected {INDEX_FORMAT!r}")
        key = BundleKey(
            m["bundle_hash"], int(m["dim"]), m["cl_space"], int(m["cl_dim"]), int(m.get("feature_dim", 0))
        )
        if bundle is not None:
            check_compatible(key, BundleKey.of(bundle), folder)
        self = cls(key, m["factory"])
        self.images = _Table.read(folder, self.spec, key.dim, "images")
        self.captions = _Table.read(folder, self.spec, key.cl_dim, "captions")
        self.features = _FeatureStore.read(folder, key.feature_dim)
        for int_id, meta in _read_metadata(folder / METADATA).items():
            self._state.put(int_id, meta)
        self.version, self.next_id, self.uid = int(m["version"]), int(m["next_id"]), m["uid"]
        self.created, self.updated = m["created"], m["updated"]
        self.nprobe = int(m.get("search_params", {}).get("nprobe", self.nprobe))
        self.ef_search = int(m.get("search_params", {}).get("ef_search", self.ef_search))
        if (folder / REPORT).is_file():
            self.report = json.loads((folder / REPORT).read_text(encoding="utf-8"))
        self._check_consistent(folder, m)
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
        n = len(metas)
        img = self._vectors(image_vectors, n, self.dim, "image_vectors")
        feats = None
        if features is not None and self.key.feature_dim:
            feats = self._vectors(features, n, self.key.feature_dim, "features")
        caps = _caption_rows(caption_vectors, n)
        for m, c in zip(metas, caps, strict=True):
            if m.has_caption != (c is not None):
                raise ValueError(f"{m.id}: a caption vector must be given iff the image has captions")
        last = {m.id: i for i, m in enumerate(metas)}
        keep = sorted(last.values())
        if not keep:
            return np.zeros(0, np.int64)
        replaced = [self._state.by_id[metas[i].id] for i in keep if metas[i].id in self._state.by_id]
        int_ids = np.arange(self.next_id, self.next_id + len(keep), dtype=np.int64)
        cap_rows = [j for j, i in enumerate(keep) if caps[i] is not None]
        cap_vecs = (
            self._vectors(
                np.stack([caps[keep[j]] for j in cap_rows]), len(cap_rows), self.cl_dim, "caption_vectors"
            )
            if cap_rows
            else np.zeros((0, self.cl_dim), np.float32)
        )
        self.images.ensure_trained(img[keep])  # may raise: nothing has changed yet
        self.captions.ensure_trained(cap_vecs)
        self._remove_int(replaced)
        self.images.add(int_ids, img[keep])
        self.captions.add(int_ids[cap_rows], cap_vecs)
        if feats is not None:
            self.features.add(int_ids, feats[keep])
        for j, i in enumerate(keep):
            self._state.put(int(int_ids[j]), metas[i])
        self.next_id += len(keep)
        self._touch()
        return int_ids

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
        arr = _id_array(int_ids)
        captioned = _id_array(i for i in int_ids if i not in self._state.uncaptioned)
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

    @staticmethod
    def _vectors(x: np.ndarray, n: int, dim: int, what: str) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape != (n, dim):
            raise ValueError(f"{what}: shape {x.shape}, expected ({n}, {dim})")
        if not np.isfinite(x).all():
            raise ValueError(f"{what}: non-finite values")
        return x

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
        ids = _id_array(int_ids)
        if not self.features.count or not np.isin(ids, self.features.ids()).all():
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
        return np.sort(_id_array(self._state.meta))

    @property
    def uncaptioned_count(self) -> int:
        return len(self._state.uncaptioned)

    def uncaptioned_ids(self) -> np.ndarray:
        return np.sort(_id_array(self._state.uncaptioned))

    def ids_with_tags(self, tags: Iterable[str]) -> np.ndarray:
        """Sorted int ids of images carrying every tag in ``tags`` (all images when ``tags`` is empty)."""
        tags = list(dict.fromkeys(tags))
        if not tags:
            return self.int_ids()
        sets = sorted((self._state.tags.get(t, set()) for t in tags), key=len)
        common = set(sets[0]).intersection(*sets[1:])
        return np.sort(_id_array(common))

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
        }

    def save(self, folder: str | os.PathLike[str] | None = None) -> Path:
        """Write the index atomically: a temp folder next to ``folder`` is filled, then swapped in with two renames
        (old -> .old-*, temp -> folder); the old folder is deleted only after the second rename succeeded. Does not
        mutate the index."""
        target = Path(folder) if folder is not None else self.folder
        if target is None:
            raise ValueError("save: no folder given and the index was never loaded or saved")
        target = target.absolute()
        target.parent.mkdir(parents=True, exist_ok=True)
        with _parent_lock(target):  # one save at a time, across processes
            _recover(target)
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
            try:
                os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the index from other users
                for t in (self.images, self.captions, self.features):
                    t.write(tmp)
                _write_metadata(tmp / METADATA, self._state.meta)
                if self.report is not None:
                    _write_text(tmp / REPORT, json.dumps(self.report, ensure_ascii=False, indent=1))
                _write_text(tmp / MANIFEST, json.dumps(self.manifest(), ensure_ascii=False, indent=1))  # last
                for p in tmp.iterdir():
                    _fsync(p)
                _swap_in(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        self.folder = target
        return target


def check_compatible(index: BundleKey, bundle: BundleKey, folder: Path | None = None) -> None:
    diffs = [
        f"{name}: index {getattr(index, name)!r} vs bundle {getattr(bundle, name)!r}"
        for name in ("bundle_hash", "dim", "cl_space", "cl_dim")
        if getattr(index, name) != getattr(bundle, name)
    ]
    if diffs:
        where = f"{folder}: " if folder else ""
        raise IndexMismatchError(
            f"{where}index was built with another bundle ({'; '.join(diffs)}); rebuild it with `xlsearch index`"
        )


def _caption_rows(caption_vectors: Any, n: int) -> list[np.ndarray | None]:
    if caption_vectors is None:
        return [None] * n
    if isinstance(caption_vectors, np.ndarray):
        if caption_vectors.ndim != 2 or len(caption_vectors) != n:
            raise ValueError(f"caption_vectors: shape {caption_vectors.shape}, expected ({n}, dim)")
        return list(caption_vectors)
    rows = list(caption_vectors)
    if len(rows) != n:
        raise ValueError(f"caption_vectors: {len(rows)} rows for {n} images")
    return rows


# -- atomic folder swap ----------------------------------------------------------------------------------------
def _write_text(path: Path, text: str) -> None:
    path.write_text(text + "\n", encoding="utf-8")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_in(tmp: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    _fsync(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it; restored at once
    os.umask(mask)
    return mask


@contextmanager
def _parent_lock(target: Path, blocking: bool = True) -> Iterator[bool]:
    """flock on the folder's parent directory, held by every save (so a loader can tell the temp folder of a live
    save from one left by a killed save). Yields False when ``blocking`` is off and a save holds it."""
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _remove_stale_temps(target: Path) -> None:
    """Temp folders of a save that was killed (kill -9, power loss) hold a full copy of the index: remove them,
    unless a save is running right now in some process."""
    parent = target.parent
    if not parent.is_dir() or not any(parent.glob(f".{target.name}.tmp-*")):
        return
    with _parent_lock(target, blocking=False) as free:
        if not free:
            return  # a live save owns them
        for p in sorted(parent.glob(f".{target.name}.tmp-*")):
            size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            shutil.rmtree(p, ignore_errors=True)
            log.warning("removed %s (%d bytes) left by an interrupted save", p, size)


def _recover(target: Path) -> None:
    """After a crash between the two renames of ``_swap_in`` the folder is missing but its previous version
    survives as ``.<name>.old-*``: put it back. (Temp folders of a crashed save are left for the operator: another
    process might still be writing one.)"""
    parent = target.parent
    if not parent.is_dir():
        return
    olds = sorted(parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not target.exists():
        os.rename(olds.pop(), target)
    for p in olds:
        shutil.rmtree(p, ignore_errors=True)
