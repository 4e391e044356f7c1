"""The index on Milvus: ``MilvusIndex`` implements ``xlsearch.index.backend.IndexBackend`` and ``MilvusChanges``
``DurableChanges`` over one collection (``xlsearch.index.milvus_schema``), so the engine's exact fusion runs on it
unchanged: top-D from each vector field (Milvus search, tag filters as ``array_contains_all``), then both scores
computed exactly for every candidate from the stored float32 vectors read back by id.

The process holds no index state but caches, so any number of servers can serve one collection:
- rows (vectors + metadata) by int id, an LRU: an int id is never reused (a replaced image gets a new auto id), so
  a cached row is never stale; search hits bring their rows along (``prefetch``), the rest is fetched by id;
- the **version** (row count of the change log, shared by every replica), the counts and the physical collection
  behind the alias, re-read at most every ``refresh_seconds`` and at once after a change made here.

Add/delete write through to Milvus, which owns durability and replication. An add inserts the new rows, then
deletes the rows the same ids had, then logs the change: a crash in between leaves the old copy too (``int_id``
returns the newest; the next add or delete of that id removes both), never neither.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.index.changelog import checked_add
from xlsearch.index.key import BundleKey, check_compatible
from xlsearch.index.metadata import ImageMeta
from xlsearch.index.milvus_schema import (
    LOG_SUFFIX,
    LRU,
    MAX_TOPK,
    META_FIELDS,
    Eligible,
    Identity,
    both,
    connect,
    create_collections,
    entity_rows,
    in_list,
    log_row,
    now,
    physical_name,
    pk_of,
    point_alias,
    quote,
    resolve,
    tags_filter,
    to_meta,
    to_vectors,
)

BATCH = 1000  # rows per insert / get call


class MilvusIndex:
    """One xlsearch collection (by alias ``name``) in Milvus at ``uri``. Thread-safe (the engine's lock is not
    needed around it, but harmless). Build with ``create`` or ``open``."""

    folder: Path | None = None
    report: dict[str, Any] | None = None

    def __init__(
        self,
        client: Any,
        name: str,
        *,
        refresh_seconds: float = 0.5,
        row_cache: int = 50_000,
        prefetch: bool = True,
        max_topk: int = MAX_TOPK,
        uri: str = "",
    ):
        self.client, self.name, self.uri = client, name, uri
        self.refresh_seconds, self.prefetch, self.max_topk = refresh_seconds, prefetch, max_topk
        self.writer = uuid.uuid4().hex[:12]  # who wrote a log row
        self._metas, self._vectors = LRU(row_cache), LRU(row_cache)
        self._eligible = LRU(64)  # (version, *tags) -> eligible ids
        self._lock = threading.Lock()
        self._physical = ""
        self._checked = -1.0
        self._version = 0
        self._counts = (0, 0)  # images, uncaptioned
        self._tag_counts: tuple[int, dict[str, int]] | None = None
        self.updated = now()
        self.refresh(force=True)

    # -- construction --------------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        uri: str,
        name: str,
        bundle: Any,
        *,
        index_type: str = "FLAT",
        token: str | None = None,
        alias: bool = True,
        **kw: Any,
    ) -> MilvusIndex:
        """A new empty physical collection; ``alias`` points ``name`` at it at once (False: the caller calls
        ``publish`` when it is filled, e.g. ``xlsearch index`` replacing a served collection)."""
        client = connect(uri, token)
        ident = Identity(BundleKey.of(bundle), uuid.uuid4().hex, index_type, now())
        physical = physical_name(name, ident.uid)
        create_collections(client, physical, ident)
        client.insert(physical + LOG_SUFFIX, [log_row("create", writer="create")])
        if alias:
            point_alias(client, name, physical)
        self = cls.__new__(cls)
        cls.__init__(self, client, physical if not alias else name, uri=uri, **kw)
        self._publish_as = name
        return self

    @classmethod
    def open(
        cls, uri: str, name: str, bundle: Any | None = None, *, token: str | None = None, **kw: Any
    ) -> MilvusIndex:
        """The collection ``name`` points at; with ``bundle``, refuse one built for another bundle."""
        self = cls(connect(uri, token), name, uri=uri, **kw)
        if bundle is not None:
            self.check_compatible(bundle)
        return self

    def publish(self) -> None:
        """Point the alias at this (filled) collection and drop the one it pointed at before."""
        name = getattr(self, "_publish_as", self.name)
        old = resolve(self.client, name, missing_ok=True)
        point_alias(self.client, name, self._physical)
        if old and old != self._physical:
            for c in (old, old + LOG_SUFFIX):
                if self.client.has_collection(c):
                    self.client.drop_collection(c)
        self.name = name

    # -- shared state --------------------------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> None:
        """Re-read the physical collection, version and counts (at most every ``refresh_seconds``)."""
        t = time.monotonic()
        if not force and t - self._checked < self.refresh_seconds:
            return
        physical = resolve(self.client, self.name)
        with self._lock:
            if physical != self._physical:
                desc = self.client.describe_collection(physical)
                self.ident = Identity.from_properties(desc.get("properties", {}), f"milvus {self.name}")
                self._physical, self._tag_counts = physical, None
                self._metas.clear()  # int ids of another collection
                self._eligible.clear()
                self._vectors.clear()
                self.nprobe, self.ef_search = self.ident.nprobe, self.ident.ef_search
                self.client.load_collection(physical)
                self.client.load_collection(physical + LOG_SUFFIX)
                version = -1
            else:
                version = self._version
        new = self._count(self._physical + LOG_SUFFIX) - 1
        if new != version:
            counts = (self._count(self._physical), self._count(self._physical, "has_caption == false"))
            with self._lock:
                self._version, self._counts, self.updated = new, counts, now()
        self._checked = t

    def _count(self, collection: str, expr: str = "") -> int:
        res = self.client.query(collection, filter=expr, output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    @property
    def version(self) -> int:
        """The shared index version: every replica reads the same number for the same state of the collection
        (at most ``refresh_seconds`` late for another replica's change, at once for this process's own)."""
        self.refresh()
        return self._version

    shared_version = True  # caches may share entries across processes by (uid, version) alone

    # -- identity ------------------------------------------------------------------------------------------------
    key = property(lambda self: self.ident.key)
    uid = property(lambda self: self.ident.uid)
    dim = property(lambda self: self.ident.key.dim)
    cl_dim = property(lambda self: self.ident.key.cl_dim)
    bundle_hash = property(lambda self: self.ident.key.bundle_hash)
    cl_space = property(lambda self: self.ident.key.cl_space)
    created = property(lambda self: self.ident.created)
    source_roots = property(lambda self: list(self.ident.source_roots))

    @property
    def factory(self) -> str:
        return f"milvus:{self.ident.index_type}"

    @property
    def exact(self) -> bool:
        return self.ident.index_type == "FLAT"

    @property
    def index_hash(self) -> str:
        import hashlib

        self.refresh()
        return hashlib.sha256(f"{self.uid}:{self.version}".encode()).hexdigest()[:16]

    @property
    def count(self) -> int:
        self.refresh()
        return self._counts[0]

    @property
    def uncaptioned_count(self) -> int:
        self.refresh()
        return self._counts[1]

    @property
    def caption_count(self) -> int:
        self.refresh()
        return self._counts[0] - self._counts[1]

    def check_compatible(self, bundle: Any) -> None:
        check_compatible(self.key, BundleKey.of(bundle), Path(f"milvus:{self.name}"))

    # -- queries -------------------------------------------------------------------------------------------------
    def search_images(
        self, q: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return self._search("image", q, k, allowed, None)

    def search_captions(
        self, q: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return self._search("caption", q, k, allowed, "has_caption == true")

    def _search(
        self, field: str, q: np.ndarray, k: int, allowed: np.ndarray | None, expr: str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if allowed is not None:
            if len(allowed) == 0:
                return np.zeros(0, np.float32), np.zeros(0, np.int64)
            expr = both(expr, getattr(allowed, "filter", None) or in_list("pk", allowed))
        out = [*META_FIELDS, "image", "caption"] if self.prefetch else []
        params = {"metric_type": "IP", "params": {"ef": max(self.ef_search, k), "nprobe": self.nprobe}}
        vec = [np.asarray(q, np.float32).tolist()]
        if k <= self.max_topk:
            (hits,) = self.client.search(
                self._physical,
                vec,
                anns_field=field,
                limit=k,
                filter=expr or "",
                output_fields=out,
                search_params=params,
            )
        else:  # deeper than one search may go: page through a search iterator
            it = self.client.search_iterator(
                self._physical,
                vec,
                anns_field=field,
                batch_size=self.max_topk,
                limit=k,
                filter=expr or "",
                output_fields=out,
                search_params=params,
            )
            hits = []
            while batch := it.next():
                hits.extend(batch)
            it.close()
        ids = np.fromiter((pk_of(h) for h in hits), np.int64, len(hits))
        scores = np.fromiter((float(h["distance"]) for h in hits), np.float32, len(hits))
        if self.prefetch:
            self._metas.put((pk_of(h), to_meta(h["entity"])) for h in hits)
            self._vectors.put((pk_of(h), to_vectors(h["entity"])) for h in hits)
        return scores, ids

    def _cached(self, cache: LRU, int_ids: Iterable[int], fields: list[str], convert: Any) -> list[Any]:
        """Values of ``cache`` for live or cached ids, fetching the missing ones by id (KeyError for an id Milvus
        does not have)."""
        ids = [int(i) for i in int_ids]
        found = cache.get_many(ids)
        missing = list(dict.fromkeys(i for i in ids if i not in found))
        for start in range(0, len(missing), BATCH):
            part = missing[start : start + BATCH]
            fetched = [
                (pk_of(e), convert(e))
                for e in self.client.get(self._physical, ids=part, output_fields=fields)
            ]
            found.update(fetched)
            cache.put(fetched)
        absent = [i for i in ids if i not in found]
        if absent:
            raise KeyError(f"ids not in milvus collection {self.name}: {absent[:5]}")
        return [found[i] for i in ids]

    def _vecs(self, int_ids: Iterable[int]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        return self._cached(self._vectors, int_ids, ["image", "caption", "has_caption"], to_vectors)

    def image_vectors(self, int_ids: np.ndarray) -> np.ndarray:
        rows = self._vecs(int_ids)
        return np.stack([r[0] for r in rows]) if rows else np.zeros((0, self.dim), np.float32)

    def caption_vectors(self, int_ids: np.ndarray) -> np.ndarray:
        caps = [r[1] for r in self._vecs(int_ids)]
        if any(c is None for c in caps):
            raise KeyError("caption_vectors of an image without a caption")
        return np.stack(caps) if caps else np.zeros((0, self.cl_dim), np.float32)  # type: ignore[arg-type]

    def has_caption(self, int_ids: np.ndarray) -> np.ndarray:
        return np.fromiter((m.has_caption for m in self.metadata(int_ids)), bool, len(int_ids))

    def metadata(self, int_ids: Iterable[int]) -> list[ImageMeta]:
        return self._cached(self._metas, int_ids, META_FIELDS, to_meta)

    def image_features(self, int_ids: np.ndarray) -> np.ndarray | None:
        if not self.key.feature_dim:
            return None
        ids = [int(i) for i in int_ids]
        got = {
            pk_of(e): e
            for e in self.client.get(self._physical, ids=ids, output_fields=["has_feature", "feature"])
        }
        if any(i not in got or not got[i]["has_feature"] for i in ids):
            return None
        return np.stack([np.asarray(got[i]["feature"], np.float32) for i in ids])

    def int_id(self, sid: str) -> int | None:
        got = self.client.query(self._physical, filter=f"sid == {quote(sid)}", output_fields=["pk"])
        return max((pk_of(e) for e in got), default=None)

    def _pks_of(self, sids: Sequence[str]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for start in range(0, len(sids), BATCH):
            part = sids[start : start + BATCH]
            for e in self.client.query(
                self._physical, filter=in_list("sid", part, strings=True), output_fields=["sid"]
            ):
                out.setdefault(str(e["sid"]), []).append(pk_of(e))
        return out

    def ids_with_tags(self, tags: Iterable[str]) -> np.ndarray:
        """Sorted int ids of images carrying every tag (a query iterator: O(matches)); their metadata is needed
        next (``has_caption``), so the matches bring it along."""
        tags = list(dict.fromkeys(tags))
        self.refresh()
        key = (self.version, *tags)  # the eligible set of one version: reused until the version moves
        hit = self._eligible.get_many([key])
        if key in hit:
            return hit[key]
        expr = tags_filter(tags) if tags else ""
        ids = np.sort(np.asarray([i for i, _ in self._scan(expr, META_FIELDS, remember=True)], np.int64))
        out = Eligible.of(ids, expr) if tags else ids
        self._eligible.put([(key, out)])
        return out

    def _scan(self, expr: str, fields: list[str], remember: bool = False) -> list[tuple[int, Any]]:
        it = self.client.query_iterator(self._physical, batch_size=BATCH, filter=expr, output_fields=fields)
        out: list[tuple[int, Any]] = []
        while batch := it.next():
            part = [(pk_of(e), to_meta(e) if remember else e) for e in batch]
            if remember:
                self._metas.put(part)
            out.extend(part)
        it.close()
        return out

    def tag_counts(self) -> dict[str, int]:
        """Images per tag: a scan of the tags field, cached per version (stats only)."""
        self.refresh()
        cached = self._tag_counts
        if cached is not None and cached[0] == self.version:
            return cached[1]
        counts: dict[str, int] = {}
        for _, e in self._scan("", ["tags"]):
            for t in e["tags"] or ():
                counts[t] = counts.get(t, 0) + 1
        self._tag_counts = (self.version, counts)
        return counts

    # -- changes (write through) ---------------------------------------------------------------------------------
    def add(
        self,
        metas: Sequence[ImageMeta],
        image_vectors: np.ndarray,
        caption_vectors: Any = None,
        features: np.ndarray | None = None,
    ) -> np.ndarray:
        """Insert images (an id already present is replaced; within one call the last occurrence wins) -> their
        new int ids. Raises ValueError (nothing written) for a bad change."""
        change = checked_add(
            metas, image_vectors, caption_vectors, features, self.dim, self.cl_dim, self.key.feature_dim
        )
        keep = sorted({m.id: i for i, m in enumerate(metas)}.values())
        if not keep:
            return np.zeros(0, np.int64)
        caps = change.captions or []
        kept_metas = [metas[i] for i in keep]
        feats = change.features[keep] if change.features is not None else None
        rows = entity_rows(kept_metas, change.images[keep], [caps[i] for i in keep], feats, self.key)
        old = [pk for pks in self._pks_of([m.id for m in kept_metas]).values() for pk in pks]
        new: list[int] = []
        for start in range(0, len(rows), BATCH):
            new.extend(int(i) for i in self.client.insert(self._physical, rows[start : start + BATCH])["ids"])
        for start in range(0, len(old), BATCH):
            self.client.delete(self._physical, ids=old[start : start + BATCH])
        self._log("add", images=len(new), replaced=len(old))
        return np.asarray(new, np.int64)

    def remove(self, ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """Delete images by string id -> (removed, not found), in the given order (duplicates once)."""
        sids = list(dict.fromkeys(ids))
        pks = self._pks_of(sids)
        removed = [s for s in sids if s in pks]
        flat = [pk for s in removed for pk in pks[s]]
        for start in range(0, len(flat), BATCH):
            self.client.delete(self._physical, ids=flat[start : start + BATCH])
        if removed:
            self._log("remove", images=len(removed))
        return removed, [s for s in sids if s not in pks]

    def _log(self, op: str, **info: Any) -> None:
        self.client.insert(self._physical + LOG_SUFFIX, [log_row(op, writer=self.writer, **info)])
        self.refresh(force=True)

    def needs_compaction(self) -> bool:
        return False  # Milvus compacts its own segments

    def compact(self) -> None:
        return None

    def set_params(
        self, nprobe: int | None = None, ef_search: int | None = None, roots: Sequence[str] = ()
    ) -> None:
        """Store search parameters and source folders in the collection's properties (the indexer)."""
        self.ident.nprobe = nprobe or self.ident.nprobe
        self.ident.ef_search = ef_search or self.ident.ef_search
        self.ident.source_roots = tuple(roots) or self.ident.source_roots
        self.nprobe, self.ef_search = self.ident.nprobe, self.ident.ef_search
        self.client.alter_collection_properties(self._physical, properties=self.ident.properties())

    def flush(self) -> None:
        self.client.flush(self._physical)
        self.client.flush(self._physical + LOG_SUFFIX)

    def describe(self) -> dict[str, Any]:
        return {"uri": self.uri, "collection": self.name, "physical": self._physical, "version": self.version}

    def close(self) -> None:
        self.client.close()
