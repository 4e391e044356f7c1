"""Search engine: a query -> images ranked by s = a*CL + (1-a)*CM over the whole collection (exact fusion,
``xlsearch.search.fusion``), plus the changes (add, delete) and lookups a server needs. Torch-free.

Tags filter: only images carrying all the given tags are eligible; the filter is a faiss IDSelector applied inside
both index searches, so top-k is taken among eligible images (not by dropping hits afterwards).

Concurrency: searches hold a read lock (many at once), add/delete hold the write lock while mutating the index;
query and image encoding happen outside any lock (queries are micro-batched over a pool of encoders). Changes are
serialised before they take the write lock. Persistence (``xlsearch.index.store.IndexStore``): each change is
appended to the index folder's change log and fsync'd before it is applied and acknowledged; full snapshots are
written in the background once the log is large, so a change costs its own record whatever the index size.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.common.timing import StageTimer
from xlsearch.encode.encoder_pool import MicroBatcher
from xlsearch.errors import InvalidArgument, NotFound
from xlsearch.index.backend import DurableChanges, IndexBackend
from xlsearch.index.image_index import ImageMeta
from xlsearch.index.store import IndexStore
from xlsearch.search.adding import ImagePreparer
from xlsearch.search.annotate import Annotator
from xlsearch.search.errors import ImageUnavailable, IndexPersistError
from xlsearch.search.fusion import exact_topk, page_of
from xlsearch.search.images import image_query_vectors
from xlsearch.search.locks import RWLock
from xlsearch.search.types import (
    STAGES,
    Annotation,
    CaptionRequest,
    Deleted,
    Hit,
    Limits,
    NewImage,
    PreparedImages,
    QueryVectors,
    SearchRequest,
    SearchResult,
    Stats,
    TagRequest,
)
from xlsearch.search.validate import fusion_weight, search_request

log = logging.getLogger(__name__)


class SearchEngine:
    """Search, add and delete over one ``ImageIndex`` with one ``Bundle``. Thread-safe; satisfies
    ``xlsearch.search.protocol.Engine``.

    ``folder``: where changes are persisted (default: the folder the index was loaded from; None and an index never
    saved -> in memory only). ``initial_depth``: first D of the threshold loop (default max(4*top_k, 64)).
    ``encode_slots`` query batches encode at once (default: the bundle's sentence-encoder instances), each of at
    most ``max_query_batch`` queries, collected for ``query_batch_window`` seconds (0: only what is queued).
    ``snapshot_min_bytes`` / ``snapshot_fraction``: when the change log triggers a background snapshot. ``index``
    is any ``xlsearch.index.backend.IndexBackend``; ``store`` its durable changes (default: the FAISS folder's
    ``IndexStore``).
    """

    def __init__(
        self,
        bundle: Any,
        index: IndexBackend,
        folder: str | Path | None = None,
        limits: Limits | None = None,
        initial_depth: int | None = None,
        persist: bool = True,
        encode_batch: int = 16,
        min_tag_score: float = 0.3,
        encode_slots: int | None = None,
        max_query_batch: int = 16,
        query_batch_window: float = 0.0,
        snapshot_min_bytes: int = 64 << 20,
        snapshot_fraction: float = 0.5,
        store: DurableChanges | None = None,
    ):
        index.check_compatible(bundle)
        self.bundle, self.index = bundle, index
        self.limits = limits or Limits()
        self.initial_depth = initial_depth
        self.folder = Path(folder) if folder is not None else index.folder
        self.persist = persist and self.folder is not None
        # predicted tags of added images are stored as `xlsearch index` does
        self._adding = ImagePreparer(bundle, self.limits, index.dim, min_tag_score, encode_batch)
        self._lock = RWLock()
        self._init_lock = threading.Lock()
        self._writes = threading.Lock()  # one change at a time
        self.store: DurableChanges | None = store  # a backend that owns its durability brings its own
        if self.store is None and self.persist:
            assert self.folder is not None
            self.store = IndexStore(
                index,
                self.folder,
                self._lock,
                self._writes,
                snapshot_min_bytes=snapshot_min_bytes,
                snapshot_fraction=snapshot_fraction,
            )
        self._annotator: Any = None
        self._zh_uses_sentence = bundle.uses_sentence("zh")
        # Concurrent queries: up to `encode_slots` batches encode at once (one per sentence-encoder instance);
        # queries that arrive while every slot is busy are encoded together in the next batch.
        slots = encode_slots or int(getattr(bundle, "sentence_instances", 1))
        self._queries: MicroBatcher[str, tuple[np.ndarray, np.ndarray, dict[str, float]]] = MicroBatcher(
            self._encode_batch, slots=slots, max_batch=max_query_batch, window_seconds=query_batch_window
        )

    # -- identity -----------------------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return self.index.version

    @property
    def index_version(self) -> int:
        return self.index.version

    @property
    def bundle_hash(self) -> str:
        return str(self.bundle.content_hash)

    @property
    def index_uid(self) -> str:
        """Identity of the index lineage (kept across versions and saves)."""
        return self.index.uid

    @property
    def index_hash(self) -> str:
        """Changes with every version of every index."""
        return self.index.index_hash

    @property
    def shared_version(self) -> bool:
        """True when every process serving this index reads the same version for the same state (a database
        backend: Milvus); False for a FAISS folder, whose version counts this process's own changes."""
        return bool(getattr(self.index, "shared_version", False))

    def warmup(self) -> None:
        """Load lazily initialised encoders (the sentence model) and run each path once, so the first request
        is not slow."""
        warm = getattr(self.bundle, "warm_sentence_encoders", None)
        if warm is not None:  # every instance of a sentence-encoder pool, not only the first one used
            warm()
        self.search("热身", top_k=1, mode="CLM")
        for kind in ("tagger", "captioner"):  # load the bundle's components now rather than on the first call
            getattr(self.bundle, kind, None)

    # -- search -------------------------------------------------------------------------------------------------
    def search(
        self,
        query: str,
        top_k: int | None = 10,
        mode: str = "CLM",
        alpha: float | None = None,
        tags: Sequence[str] | None = None,
    ) -> SearchResult:
        """Top-k images for a query (library use: validates, then ``run``)."""
        return self.run(search_request(query, top_k, mode, alpha, tags, self.limits))

    def search_vectors(
        self,
        q_cm: np.ndarray,
        q_cl: np.ndarray | None = None,
        top_k: int | None = 10,
        mode: str = "CLM",
        alpha: float | None = None,
        tags: Sequence[str] | None = None,
        *,
        min_score: float | None = None,
        offset: int = 0,
    ) -> SearchResult:
        """Like ``search`` with precomputed query vectors: ``q_cm`` [dim] in the image space, ``q_cl`` [cl_dim] in
        the CL space (needed unless mode is CM). E.g. an image vector as ``q_cm`` searches by example image."""
        request = search_request(
            "", top_k, mode, alpha, tags, self.limits, by_vectors=True, min_score=min_score, offset=offset
        )
        return self.run(request, (q_cm, q_cl))

    def run(
        self, request: SearchRequest, vectors: QueryVectors | tuple[Any, Any] | None = None
    ) -> SearchResult:
        """A validated request; ``vectors`` (CM, CL) when the caller has them (e.g. from the embedding cache),
        else the query (text, or ``request.image``) is encoded here. Paging and the cutoff are exact: the top
        offset + top_k (+1) images are ranked exactly, then cut (``fusion.page_of``)."""
        timer = StageTimer(STAGES)
        weight = fusion_weight(request, self.bundle.alpha)
        if vectors is None:
            if request.image is not None:  # search by image: its vector in the bundle's image space
                vectors = image_query_vectors(
                    self.bundle, self.limits, request.image, self.image_vector, timer
                )
            else:
                vectors = self.encode_query(request.query, timer)
        q_cm = _finite(_check_vector(vectors[0], self.index.dim, "q_cm"))
        if vectors[1] is None:
            if weight > 0.0:
                raise InvalidArgument(f"mode {request.mode} needs a CL query vector")
            q_cl = None
        else:
            q_cl = _finite(_check_vector(vectors[1], self.index.cl_dim, "q_cl"))
        with self._lock.read():
            index = self.index
            with timer("search"):
                eligible = index.ids_with_tags(request.tags) if request.tags else None
            exclude = index.int_id(request.exclude_id) if request.exclude_id else None
            depth = request.offset + request.top_k + 1 + (exclude is not None)
            ranked, info = exact_topk(index, q_cm, q_cl, weight, depth, eligible, timer, self.initial_depth)
            ranked, more = page_of(ranked, request.offset, request.top_k, request.min_score, exclude)
            with timer("metadata"):
                metas = index.metadata(ranked["id"])
                hits = [
                    Hit(
                        m.id,
                        m.uri,
                        float(r["score"]),
                        float(r["cl"]),
                        float(r["cm"]),
                        m.caption,
                        list(m.tags),
                        m.has_caption,
                    )
                    for m, r in zip(metas, ranked, strict=True)
                ]
            version = index.version
        next_offset = request.offset + request.top_k if more else 0
        return SearchResult(
            hits,
            timer.seconds,
            weight,
            version,
            request.mode,
            exact=index.exact,
            **info,
            offset=request.offset,
            next_offset=next_offset,
        )

    def encode_query(self, query: str, timer: StageTimer | None = None) -> QueryVectors:
        """(CM vector [dim], CL vector [cl_dim]) of one query. No validation (``search`` validates first).
        Concurrent calls are micro-batched (``xlsearch.encode.encoder_pool.MicroBatcher``); ``timer`` gets the
        tokenize/encode time of the batch the query ran in (queueing for a free encoder is not a stage)."""
        q_cm, q_cl, seconds = self._queries.submit(query)
        if timer is not None:
            for stage, sec in seconds.items():
                timer.add(stage, sec)
        return q_cm, q_cl

    def _encode_batch(self, queries: list[str]) -> list[tuple[np.ndarray, np.ndarray, dict[str, float]]]:
        timer = StageTimer()
        q_cm, q_cl = self.encode_queries(queries, timer)
        return [(q_cm[n], q_cl[n], timer.seconds) for n in range(len(queries))]

    def encode_stats(self) -> dict[str, float]:
        """Query batches encoded so far and their mean size."""
        return self._queries.stats()

    def encode_queries(
        self, queries: list[str], timer: StageTimer | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(CM vectors [n,dim], CL vectors [n,cl_dim]); in the visual CL space both are the W2VV zh vectors.
        Non-finite vectors (a degenerate query) become zeros so such a query still ranks something."""
        timer = timer or StageTimer()
        b = self.bundle
        with timer("tokenize"):
            tokens = b.tokenize(queries, "zh")
        with timer("encode"):
            sent = None
            if b.cl_needs_sentence or self._zh_uses_sentence:
                sent = b.sentence_embeddings(queries, "zh")
            q_cm = _finite(b.encode_tokens(tokens, "zh", sent if self._zh_uses_sentence else None))
            q_cl = _finite(b.cl_query(q_cm, sent))  # the bundle's CL space: visual, sentence or joint
        return q_cm, q_cl

    # -- lookups ------------------------------------------------------------------------------------------------
    def get(self, image_id: str) -> ImageMeta:
        with self._lock.read():
            i = self.index.int_id(image_id)
            if i is None:
                raise NotFound(f"no image with id {image_id!r}")
            return self.index.metadata([i])[0]

    def stored_image(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(image vector [dim], backbone feature [feature_dim]) of an indexed image, from the index alone."""
        with self._lock.read():
            i = self.index.int_id(image_id)
            if i is None:
                raise NotFound(f"no image with id {image_id!r}")
            ids = np.array([i])
            feats = self.index.image_features(ids)
            if feats is None:
                raise ImageUnavailable(
                    f"image {image_id!r} is indexed without its backbone feature (an index built before "
                    "features were stored): rebuild the index with `xlsearch index`, or send the image bytes"
                )
            return self.index.image_vectors(ids)[0], feats[0]

    def image_vector(self, image_id: str) -> np.ndarray:
        """The stored image vector of an indexed image."""
        with self._lock.read():
            i = self.index.int_id(image_id)
            if i is None:
                raise NotFound(f"no image with id {image_id!r}")
            return self.index.image_vectors(np.array([i]))[0]

    # -- changes ------------------------------------------------------------------------------------------------
    def add_images(self, items: Sequence[NewImage]) -> list[str]:
        """Decode, embed and add; all-or-nothing per call (every item is validated and decoded first). An id that
        is already indexed is replaced. Returns the ids in input order."""
        return self.commit([self.prepare(items)])

    def prepare(self, items: Sequence[NewImage], start: int = 0) -> PreparedImages:
        """Validate, decode and encode a batch of new images without touching the index (no lock): a stream is
        prepared batch by batch as it arrives and committed once (``xlsearch.search.adding``)."""
        return self._adding.prepare(items, start)

    def commit(self, batches: Sequence[PreparedImages]) -> list[str]:
        """Add prepared batches to the index at once and persist. Returns the ids in order."""
        batches = [b for b in batches if b.metas]
        if not batches:
            return []
        metas = [m for b in batches for m in b.metas]
        vecs = np.concatenate([b.vectors for b in batches])
        caps = [c for b in batches for c in b.captions]
        feats = None
        if all(b.features is not None for b in batches):
            feats = np.concatenate([b.features for b in batches])  # type: ignore[misc]
        if self.store is None:
            with (
                self._writes
            ):  # writers queue here, not at the RW lock: a waiting writer never stalls searches
                with self._lock.write():
                    self.index.add(metas, vecs, caps, features=feats)
        else:
            try:
                self.store.add(metas, vecs, caps, feats)
            except OSError as e:
                raise _persist_error(self.folder, e) from e
        return [m.id for m in metas]

    def delete(self, ids: Sequence[str]) -> Deleted:
        """Remove images -> (deleted ids, ids not found)."""
        if self.store is not None:
            try:
                deleted, missing = self.store.remove(ids)
            except OSError as e:
                raise _persist_error(self.folder, e) from e
            return Deleted(deleted, missing)
        with self._writes, self._lock.write():
            deleted, missing = self.index.remove(ids)
            if deleted and self.index.needs_compaction():
                self.index.compact()
        return Deleted(deleted, missing)

    def save(self) -> None:
        """Write a full snapshot now (every change is durable in the change log anyway)."""
        if self.store is not None:
            self.store.wait()
            try:
                self.store.snapshot()
            except OSError as e:
                raise _persist_error(self.folder, e) from e

    # -- tagging and captioning ---------------------------------------------------------------------------------
    @property
    def annotator(self) -> Any:
        """Tagging and captioning of query images and indexed images (``xlsearch.search.annotate.Annotator``)."""
        with self._init_lock:
            if self._annotator is None:
                self._annotator = Annotator(self)
            return self._annotator

    def tag(self, request: TagRequest) -> Annotation:
        return self.annotator.tag(request.image, k=request.k, user_tags=request.user_tags)

    def caption(self, request: CaptionRequest) -> Annotation:
        return self.annotator.caption(request.image, n_best=request.n_best, recommend=request.recommend)

    def stats(self) -> Stats:
        with self._lock.read():
            ix = self.index
            return Stats(
                images=ix.count,
                captions=ix.caption_count,
                dim=ix.dim,
                factory=ix.factory,
                exact=ix.exact,
                bundle_hash=ix.bundle_hash,
                index_hash=ix.index_hash,
                index_version=ix.version,
                default_alpha=float(self.bundle.alpha),
                cl_space=ix.cl_space,
                tags=len(ix.tag_counts()),
                folder=str(self.folder) if self.folder else "",
                saved_version=ix.version if self.store is not None else -1,
                created=ix.created,
                updated=ix.updated,
                source_roots=tuple(ix.source_roots),
            )


def _persist_error(folder: Path | None, e: OSError) -> IndexPersistError:
    log.error("writing the change log of %s failed: %s", folder, e)
    return IndexPersistError(f"the change was not applied: writing the change log in {folder} failed: {e}")


def _check_vector(v: Any, dim: int, what: str) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    if v.shape != (dim,):
        raise InvalidArgument(f"{what} has {v.size} values, expected {dim}")
    return v


def _finite(v: np.ndarray) -> np.ndarray:
    # Defensive: a degenerate query (e.g. only unknown tokens) must rank something, never crash on NaN.
    v = np.asarray(v, dtype=np.float32)
    bad = ~np.isfinite(v).all(axis=-1)
    if not bad.any():
        return v
    v = v.copy()
    v[bad] = 0.0  # the whole vector: a half-zeroed one would still rank by garbage
    return v
