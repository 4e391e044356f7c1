"""The Milvus side of the Milvus backend (``xlsearch.index.milvus``): names, the collection schema, the identity
stored in the collection's properties, filter expressions, and turning entities into rows. Imports pymilvus lazily
(the ``[distributed]`` extra).

One index is three things in one Milvus database:

- ``<name>``: an **alias** every reader and writer uses; ``xlsearch index`` builds a new physical collection and
  moves the alias to it once it is complete (readers switch at their next refresh, then the old one is dropped);
- ``<name>__<uid>``: the physical collection, one row per image::

      pk INT64 (auto id)   sid VARCHAR   uri VARCHAR   captions JSON (list)   tags ARRAY<VARCHAR> (filterable)
      has_caption BOOL     image FLOAT_VECTOR[dim] (CM)   caption FLOAT_VECTOR[cl_dim] (CL; zeros without one)
      feature FLOAT_VECTOR[feature_dim] + has_feature BOOL (only when the bundle has a backbone feature)

  with the bundle key, uid, vector index and search parameters in its properties (``xlsearch.*``);
- ``<name>__<uid>_log``: one row per change (op, images, writer, time). Its row count is the index **version** every
  replica reads (Milvus has no atomic counter; an insert is race-free across writers).
"""

from __future__ import annotations

import datetime as _dt
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xlsearch.index.key import BundleKey, IndexFormatError
from xlsearch.index.metadata import ImageMeta

FORMAT = "xlsearch-milvus/1"
PREFIX = "xlsearch."
LOG_SUFFIX = "_log"
# Milvus' default cap on top-k (and offset + limit) per search; deeper lists page with a search iterator.
MAX_TOPK = 16384
MAX_SID, MAX_URI, MAX_TAG, MAX_TAGS = 1024, 4096, 256, 1024
INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT", "IVF_PQ", "AUTOINDEX")
META_FIELDS = ["sid", "uri", "captions", "tags", "has_caption"]


def milvus() -> Any:
    """The pymilvus module, or a clear error naming the extra."""
    try:
        import pymilvus
    except ImportError:  # pragma: no cover - depends on the install
        raise IndexFormatError(
            "the Milvus backend needs pymilvus (and milvus-lite for a local file): pip install 'xlsearch[distributed]'"
        ) from None
    return pymilvus


def connect(uri: str, token: str | None = None) -> Any:
    """A MilvusClient: ``uri`` is a Milvus Lite file (``path/x.db``, one process at a time) or a server
    (``http://host:19530``)."""
    kwargs = {"token": token} if token else {}
    return milvus().MilvusClient(uri, **kwargs)


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def quote(s: str) -> str:
    """A Milvus string literal (double quotes, backslash escapes)."""
    return json.dumps(str(s), ensure_ascii=False)


def in_list(field: str, values: Iterable[Any], strings: bool = False) -> str:
    parts = [quote(v) if strings else str(int(v)) for v in values]
    return f"{field} in [{', '.join(parts)}]"


def tags_filter(tags: Sequence[str]) -> str:
    return f"array_contains_all(tags, [{', '.join(quote(t) for t in tags)}])"


def both(*exprs: str | None) -> str:
    parts = [e for e in exprs if e]
    return " and ".join(f"({e})" for e in parts)


# -- identity ------------------------------------------------------------------------------------------------
@dataclass
class Identity:
    """What the properties of a physical collection record."""

    key: BundleKey
    uid: str
    index_type: str = "FLAT"
    created: str = ""
    nprobe: int = 16
    ef_search: int = 128
    source_roots: tuple[str, ...] = ()

    def properties(self) -> dict[str, str]:
        k = self.key
        values = {
            "format": FORMAT,
            "uid": self.uid,
            "bundle_hash": k.bundle_hash,
            "dim": k.dim,
            "cl_space": k.cl_space,
            "cl_dim": k.cl_dim,
            "feature_dim": k.feature_dim,
            "index_type": self.index_type,
            "created": self.created,
            "nprobe": self.nprobe,
            "ef_search": self.ef_search,
            "source_roots": json.dumps(list(self.source_roots)),
        }
        return {PREFIX + n: str(v) for n, v in values.items()}

    @classmethod
    def from_properties(cls, props: Mapping[str, str], where: str) -> Identity:
        p = {k[len(PREFIX) :]: v for k, v in props.items() if k.startswith(PREFIX)}
        if p.get("format") != FORMAT:
            raise IndexFormatError(f"{where}: not an xlsearch collection (format {p.get('format')!r})")
        try:
            key = BundleKey(
                p["bundle_hash"], int(p["dim"]), p["cl_space"], int(p["cl_dim"]), int(p["feature_dim"])
            )
            return cls(
                key,
                p["uid"],
                p.get("index_type", "FLAT"),
                p.get("created", ""),
                int(p.get("nprobe", 16)),
                int(p.get("ef_search", 128)),
                tuple(json.loads(p.get("source_roots", "[]"))),
            )
        except (KeyError, ValueError) as e:
            raise IndexFormatError(f"{where}: incomplete xlsearch properties ({e})") from None


def physical_name(name: str, uid: str) -> str:
    return f"{name}__{uid[:12]}"


def create_collections(client: Any, physical: str, ident: Identity) -> None:
    """The physical collection (vector indexes built, loaded) and its change log."""
    dt = milvus().DataType
    key = ident.key
    s = client.create_schema(auto_id=True, enable_dynamic_field=False)
    s.add_field("pk", dt.INT64, is_primary=True)
    s.add_field("sid", dt.VARCHAR, max_length=MAX_SID)
    s.add_field("uri", dt.VARCHAR, max_length=MAX_URI)
    s.add_field("captions", dt.JSON)
    s.add_field("tags", dt.ARRAY, element_type=dt.VARCHAR, max_capacity=MAX_TAGS, max_length=MAX_TAG)
    s.add_field("has_caption", dt.BOOL)
    s.add_field("image", dt.FLOAT_VECTOR, dim=key.dim)
    s.add_field("caption", dt.FLOAT_VECTOR, dim=key.cl_dim)
    if key.feature_dim:
        s.add_field("has_feature", dt.BOOL)
        s.add_field("feature", dt.FLOAT_VECTOR, dim=key.feature_dim)
    ip = client.prepare_index_params()
    params = _index_params(ident.index_type)
    ip.add_index("image", index_type=ident.index_type, metric_type="IP", params=params)
    ip.add_index("caption", index_type=ident.index_type, metric_type="IP", params=params)
    if key.feature_dim:  # never searched, but Milvus loads only collections whose vector fields are indexed
        ip.add_index("feature", index_type="FLAT", metric_type="IP")
    client.create_collection(
        physical, schema=s, index_params=ip, consistency_level="Strong", properties=ident.properties()
    )
    log = client.create_schema(auto_id=True, enable_dynamic_field=False)
    log.add_field("seq", dt.INT64, is_primary=True)
    log.add_field("op", dt.VARCHAR, max_length=16)
    log.add_field("info", dt.JSON)
    log.add_field("v", dt.FLOAT_VECTOR, dim=2)  # Milvus needs a vector field in every collection
    lp = client.prepare_index_params()
    lp.add_index("v", index_type="FLAT", metric_type="L2")
    client.create_collection(physical + LOG_SUFFIX, schema=log, index_params=lp, consistency_level="Strong")
    client.load_collection(physical)
    client.load_collection(physical + LOG_SUFFIX)


def _index_params(index_type: str) -> dict[str, Any]:
    if index_type == "HNSW":
        return {"M": 32, "efConstruction": 200}
    if index_type.startswith("IVF"):
        return {"nlist": 256, **({"m": 16} if index_type == "IVF_PQ" else {})}
    return {}


def log_row(op: str, **info: Any) -> dict[str, Any]:
    return {"op": op, "info": {"at": now(), **info}, "v": [0.0, 0.0]}


# -- rows ----------------------------------------------------------------------------------------------------
def entity_rows(
    metas: Sequence[ImageMeta],
    images: np.ndarray,
    captions: Sequence[np.ndarray | None],
    features: np.ndarray | None,
    key: BundleKey,
) -> list[dict[str, Any]]:
    zeros = np.zeros(key.cl_dim, np.float32)
    rows = []
    for n, m in enumerate(metas):
        if len(m.id) > MAX_SID or len(m.uri) > MAX_URI or len(m.tags) > MAX_TAGS:
            raise ValueError(f"{m.id[:64]}: id, uri or tags too long for the Milvus schema")
        if any(len(t) > MAX_TAG for t in m.tags):
            raise ValueError(f"{m.id[:64]}: a tag longer than {MAX_TAG} characters")
        cap = captions[n]
        row: dict[str, Any] = {
            "sid": m.id,
            "uri": m.uri,
            "captions": list(m.captions),
            "tags": list(m.tags),
            "has_caption": cap is not None,
            "image": images[n],
            "caption": zeros if cap is None else cap,
        }
        if key.feature_dim:
            row["has_feature"] = features is not None
            row["feature"] = features[n] if features is not None else np.zeros(key.feature_dim, np.float32)
        rows.append(row)
    return rows


class LRU:
    """A thread-safe bounded map (least recently used out). The caches of the Milvus backend are keyed by int
    id, and what an int id holds never changes (a replaced image gets a new id), so an entry is never stale."""

    def __init__(self, capacity: int):
        self.capacity, self._d, self._lock = capacity, OrderedDict(), threading.Lock()  # type: ignore[var-annotated]

    def get_many(self, keys: Iterable[Any]) -> dict[Any, Any]:
        with self._lock:
            return {k: self._d[k] for k in keys if k in self._d}

    def put(self, items: Iterable[tuple[Any, Any]]) -> None:
        with self._lock:
            for k, v in items:
                self._d[k] = v
                self._d.move_to_end(k)
            while len(self._d) > self.capacity:
                self._d.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()


def to_meta(e: Mapping[str, Any]) -> ImageMeta:
    return ImageMeta(str(e["sid"]), str(e["uri"]), tuple(e["captions"] or ()), tuple(e["tags"] or ()))


def to_vectors(e: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """(image vector, caption vector or None) of an entity, float32 as stored."""
    cap = np.asarray(e["caption"], np.float32) if e["has_caption"] else None
    return np.asarray(e["image"], np.float32), cap


def pk_of(hit: Mapping[str, Any]) -> int:
    return int(hit["pk"] if "pk" in hit else hit["id"])


class Eligible(np.ndarray):
    """The int ids of a tag filter, carrying the filter expression: the searches filter inside Milvus with it
    instead of sending every id back (``filter`` is dropped by any derived array)."""

    filter: str | None = None

    @classmethod
    def of(cls, ids: np.ndarray, expr: str) -> Eligible:
        out = np.asarray(ids, np.int64).view(cls)
        out.filter = expr
        return out


def resolve(client: Any, name: str, missing_ok: bool = False) -> str:
    """The physical collection behind alias ``name`` (or ``name`` itself when it is a collection)."""
    if is_alias(client, name):
        return str(client.describe_alias(name)["collection_name"])
    if client.has_collection(name):
        return name
    if missing_ok:
        return ""
    raise IndexFormatError(
        f"milvus: no collection or alias {name!r}: build it with `xlsearch index --backend milvus`"
    )


def is_alias(client: Any, name: str) -> bool:
    return name in client.list_aliases().get("aliases", [])


def point_alias(client: Any, name: str, physical: str) -> None:
    if is_alias(client, name):
        client.alter_alias(physical, name)
    else:
        client.create_alias(physical, name)
