"""Search engine: Chinese query -> images ranked by s = a*CL + (1-a)*CM over the whole collection. Torch-free.

Exact fusion (Fagin's threshold algorithm): the top-D lists of both indexes are merged, every candidate gets BOTH
scores exactly (dot products with the stored vectors) and the best fused candidates are kept. An eligible image
outside both lists has CL <= CL_D and CM <= CM_D (the D-th scores), so its fused score is at most
a*CL_D + (1-a)*CM_D. When the k-th fused candidate reaches that bound the answer is exact; otherwise D doubles (up
to the number of eligible images, where the lists are exhaustive). Exact only with exact (Flat) indexes; with
approximate ones the candidate lists are approximate but the returned scores are still exact rescorings.

Images without a caption: their CL score is imputed by their CM score (the image stands in for its missing
description), in every mode. So in CLM their fused score is CM, in CL they rank by CM, and `has_caption` tells the
client. The bound accounts for them: an uncaptioned image outside the image list scores at most CM_D.

Tags filter: only images carrying all the given tags are eligible; the filter is a faiss IDSelector applied inside
both index searches, so top-k is taken among eligible images (not by dropping hits afterwards).

Concurrency: searches hold a read lock (many at once), add/delete hold the write lock while mutating the index;
query and image encoding happen outside any lock. Persistence (atomic save of the whole folder) runs under the read
lock, serialized by a save lock, after each change.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from xlsearch.bundle.tagger import confident_tags
from xlsearch.encode.decode import decode_pixels
from xlsearch.encode.preprocess import (
    DEFAULT_MAX_ASPECT,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
    DecodeLimits,
    ImageError,
    PixelLimitError,
)
from xlsearch.errors import Code, FailedPrecondition, Internal, InvalidArgument, NotFound
from xlsearch.index.image_index import ImageIndex, ImageMeta

__all__ = [
    "MODES",
    "Deleted",
    "Hit",
    "ImageTooLarge",
    "ImageUnavailable",
    "IndexPersistError",
    "InvalidArgument",
    "InvalidImage",
    "InvalidQuery",
    "Limits",
    "NewImage",
    "NotFound",
    "PreparedImages",
    "RWLock",
    "SearchEngine",
    "SearchResult",
]

log = logging.getLogger(__name__)

MODES = ("CL", "CM", "CLM")
STAGES = ("tokenize", "encode", "search", "fuse", "metadata")


# -- errors (codes from xlsearch.errors; each transport maps them with its own table) ----------------------------
class InvalidQuery(InvalidArgument):
    """Empty, whitespace-only, too long or not a string."""


class InvalidImage(InvalidArgument):
    """Image bytes that cannot be decoded, or an empty image, a side above ``max_image_side`` or an aspect ratio
    above ``max_image_aspect``."""


class ImageTooLarge(InvalidImage):
    """Image bytes or pixel count above the engine's limits (a decompression bomb of any size)."""

    code = Code.RESOURCE_EXHAUSTED


class ImageUnavailable(FailedPrecondition):
    """An indexed image whose backbone feature the index does not hold (an index written before features were
    stored, or a bundle without a feature output): Tag/Caption need the image bytes instead."""


class IndexPersistError(Internal):
    """Saving the index failed. The change is live in memory and becomes durable with the next successful save."""


# -- request / response types -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    max_query_chars: int = 512
    max_top_k: int = 1000
    max_tags: int = 32
    max_image_bytes: int = 32 << 20
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # above: ImageTooLarge, checked from the header
    max_image_side: int = DEFAULT_MAX_SIDE  # above: InvalidImage
    max_image_aspect: float = DEFAULT_MAX_ASPECT  # longer side / shorter side above: InvalidImage
    max_caption_chars: int = 2048
    max_id_chars: int = 512

    @property
    def decode(self) -> DecodeLimits:
        return DecodeLimits(self.max_image_pixels, self.max_image_side, self.max_image_aspect)


@dataclass(frozen=True)
class NewImage:
    image_bytes: bytes
    id: str | None = None  # default: sha256 hex of image_bytes
    caption: str | None = None  # English; encoded in the bundle's CL space
    uri: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Hit:
    id: str
    uri: str
    score: float  # fused score in the requested mode
    cl_score: float  # imputed by cm_score when has_caption is False
    cm_score: float
    caption: str
    tags: list[str]
    has_caption: bool


@dataclass
class SearchResult:
    hits: list[Hit]
    timings: dict[str, float]  # seconds per stage: tokenize, encode, search, fuse, metadata
    alpha: float  # weight of CL actually used (1 for CL, 0 for CM)
    index_version: int
    mode: str = "CLM"
    depth: int = 0  # final depth D of the threshold loop
    rounds: int = 0  # index searches per table (1 = the first depth sufficed)
    candidates: int = 0  # images scored exactly in the last round
    exact: bool = True  # False with approximate indexes


@dataclass
class PreparedImages:
    """New images validated and encoded, not yet in the index (``SearchEngine.prepare`` -> ``commit``)."""

    metas: list[ImageMeta]
    vectors: np.ndarray  # [n, dim]
    captions: list[np.ndarray | None]  # CL vectors, None for images without a caption
    features: (
        np.ndarray | None
    )  # [n, feature_dim] backbone features; None when the bundle has no feature output


class Deleted(NamedTuple):
    deleted: list[str]
    not_found: list[str]


# -- readers-writer lock ----------------------------------------------------------------------------------------
class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


# -- the engine -------------------------------------------------------------------------------------------------
@dataclass
class _Timer:
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - t0


class SearchEngine:
    """Search, add and delete over one ``ImageIndex`` with one ``Bundle``. Thread-safe.

    ``folder``: where changes are persisted (default: the folder the index was loaded from; None and an index never
    saved -> in memory only). ``initial_depth``: first D of the threshold loop (default max(4*top_k, 64)).
    """

    def __init__(
        self,
        bundle: Any,
        index: ImageIndex,
        folder: str | Path | None = None,
        limits: Limits | None = None,
        initial_depth: int | None = None,
        persist: bool = True,
        encode_batch: int = 16,
        annotate_limits: Any = None,
        min_tag_score: float = 0.3,
    ):
        index.check_compatible(bundle)
        self.bundle, self.index = bundle, index
        self.limits = limits or Limits()
        self.initial_depth = initial_depth
        self.folder = Path(folder) if folder is not None else index.folder
        self.persist = persist and self.folder is not None
        self.encode_batch = encode_batch
        self._lock = RWLock()
        self._save_lock = threading.Lock()
        self._writes = threading.Lock()  # one change (mutation + its save) at a time
        self._saved_version = index.version if index.folder is not None else -1
        text = bundle.manifest.get("text_encoders", {}) if hasattr(bundle, "manifest") else {}
        self._annotator: Any = None
        self._annotate_limits = (
            annotate_limits  # xlsearch.search.annotate.AnnotateLimits (None: its defaults)
        )
        self.min_tag_score = min_tag_score  # predicted tags of added images: stored as `xlsearch index` does
        self._zh_uses_sentence = bool(text.get("zh", {}).get("sentence_dim", 0))

    @property
    def version(self) -> int:
        return self.index.version

    def warmup(self) -> None:
        """Load lazily initialised encoders (the sentence model) and run each path once, so the first request
        is not slow."""
        self.search("热身", top_k=1, mode="CLM")
        for kind in ("tagger", "captioner"):  # load the bundle's components now rather than on the first call
            getattr(self.bundle, kind, None)

    # -- search -------------------------------------------------------------------------------------------------
    def search(
        self,
        query: str,
        top_k: int = 10,
        mode: str = "CLM",
        alpha: float | None = None,
        tags: Sequence[str] | None = None,
    ) -> SearchResult:
        """Top-k images for a (Chinese) query. Raises InvalidQuery / InvalidArgument for bad requests."""
        self._validate_query(query)
        mode, top_k, weight, tags = self._validate(top_k, mode, alpha, tags)
        timer = _Timer()
        q_cm, q_cl = self.encode_query(query, timer)
        return self._search(q_cm, q_cl, top_k, mode, weight, tags, timer)

    def search_vectors(
        self,
        q_cm: np.ndarray,
        q_cl: np.ndarray | None = None,
        top_k: int = 10,
        mode: str = "CLM",
        alpha: float | None = None,
        tags: Sequence[str] | None = None,
    ) -> SearchResult:
        """Like ``search`` with precomputed query vectors: ``q_cm`` [dim] in the image space, ``q_cl`` [cl_dim] in
        the CL space (needed unless mode is CM). E.g. an image vector as ``q_cm`` searches by example image."""
        mode, top_k, weight, tags = self._validate(top_k, mode, alpha, tags)
        q_cm = _finite(_check_vector(q_cm, self.index.dim, "q_cm"))
        if q_cl is None:
            if weight > 0.0:
                raise InvalidArgument(f"mode {mode} needs a CL query vector")
        else:
            q_cl = _finite(_check_vector(q_cl, self.index.cl_dim, "q_cl"))
        return self._search(q_cm, q_cl, top_k, mode, weight, tags, _Timer())

    def _search(
        self,
        q_cm: np.ndarray,
        q_cl: np.ndarray | None,
        top_k: int,
        mode: str,
        weight: float,
        tags: list[str],
        timer: _Timer,
    ) -> SearchResult:
        with self._lock.read():
            index = self.index
            with timer("search"):
                eligible = index.ids_with_tags(tags) if tags else None
            ranked, info = self._threshold_topk(q_cm, q_cl, weight, top_k, eligible, timer)
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
        return SearchResult(hits, timer.seconds, weight, version, mode, exact=index.exact, **info)

    def _validate_query(self, query: Any) -> None:
        if not isinstance(query, str) or not query.strip():
            raise InvalidQuery("query must be a non-empty, non-whitespace string")
        if len(query) > self.limits.max_query_chars:
            raise InvalidQuery(
                f"query has {len(query)} characters; the limit is {self.limits.max_query_chars}"
            )

    def _validate(self, top_k: Any, mode: Any, alpha: Any, tags: Any) -> tuple[str, int, float, list[str]]:
        lim = self.limits
        if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer):
            raise InvalidArgument(f"top_k must be an integer, got {top_k!r}")
        if not 1 <= top_k <= lim.max_top_k:
            raise InvalidArgument(f"top_k must be in [1, {lim.max_top_k}], got {top_k}")
        mode = mode.upper() if isinstance(mode, str) else mode
        if mode not in MODES:
            raise InvalidArgument(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if alpha is not None:
            if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.floating):
                raise InvalidArgument(f"alpha must be a number, got {alpha!r}")
            if not 0.0 <= float(alpha) <= 1.0:  # also refuses NaN
                raise InvalidArgument(f"alpha must be in [0, 1], got {alpha}")
        tags = list(tags or [])
        if len(tags) > lim.max_tags:
            raise InvalidArgument(f"{len(tags)} tags; the limit is {lim.max_tags}")
        if any(not isinstance(t, str) or not t.strip() for t in tags):
            raise InvalidArgument("tags must be non-empty strings")
        weight = {"CL": 1.0, "CM": 0.0}.get(mode)
        if weight is None:
            weight = float(self.bundle.alpha if alpha is None else alpha)
        return mode, int(top_k), weight, [t.strip() for t in tags]

    def encode_query(self, query: str, timer: _Timer | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(CM vector [dim], CL vector [cl_dim]) of one query. No validation (``search`` validates first)."""
        q_cm, q_cl = self.encode_queries([query], timer)
        return q_cm[0], q_cl[0]

    def encode_queries(
        self, queries: list[str], timer: _Timer | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(CM vectors [n,dim], CL vectors [n,cl_dim]); in the visual CL space both are the W2VV zh vectors.
        Non-finite vectors (a degenerate query) become zeros so such a query still ranks something."""
        timer = timer or _Timer()
        b = self.bundle
        with timer("tokenize"):
            b.tokenize(queries, "zh")  # timed on its own; encode_texts tokenizes again (cheap, keeps the API)
        with timer("encode"):
            sent = None
            if b.cl_space == "sentence" or self._zh_uses_sentence:
                sent = b.sentence_embeddings(queries, "zh")
            q_cm = _finite(b.encode_texts(queries, "zh", sent if self._zh_uses_sentence else None))
            q_cl = _finite(sent) if b.cl_space == "sentence" else q_cm
        return q_cm, q_cl

    def _threshold_topk(
        self,
        q_cm: np.ndarray,
        q_cl: np.ndarray | None,
        a: float,
        k: int,
        eligible: np.ndarray | None,
        timer: _Timer,
    ) -> tuple[np.ndarray, dict[str, int]]:
        """Exact top-k of the fused score among eligible images (see the module docstring)."""
        index = self.index
        if eligible is None:
            n_eligible, n_uncaptioned = index.count, index.uncaptioned_count
        else:
            n_eligible = len(eligible)
            n_uncaptioned = int((~index.has_caption(eligible)).sum())
        n_captioned = n_eligible - n_uncaptioned
        need_img = a < 1.0 or n_uncaptioned > 0
        need_cap = a > 0.0 and n_captioned > 0
        # float32 search scores vs float64 rescoring of unit vectors differ by at most ~dim * 2^-24
        slack = max(index.dim, index.cl_dim) * 2.0**-24
        depth = self.initial_depth or max(4 * k, 64)
        depth, rounds = max(1, depth), 0
        q_cm64 = q_cm.astype(np.float64)
        q_cl64 = q_cl.astype(np.float64) if q_cl is not None else None
        while True:
            rounds += 1
            with timer("search"):
                img_s, img_i = index.search_images(q_cm, depth, eligible) if need_img else _empty()
                cap_s, cap_i = index.search_captions(q_cl, depth, eligible) if need_cap else _empty()
            with timer("fuse"):
                cand = np.union1d(img_i, cap_i)
                cm = index.image_vectors(cand).astype(np.float64) @ q_cm64
                has_cap = index.has_caption(cand)
                cl = cm.copy()  # imputation for uncaptioned images
                if has_cap.any() and a > 0.0:
                    cl[has_cap] = index.caption_vectors(cand[has_cap]).astype(np.float64) @ q_cl64
                fused = cm if a == 0.0 else cl if a == 1.0 else a * cl + (1.0 - a) * cm
                order = np.lexsort((cand, -fused))[:k]  # ties: lower int id (earlier insertion) first
                img_done = not need_img or len(img_i) < depth
                cap_done = not need_cap or len(cap_i) < depth
                bound = self._outside_bound(a, img_s, cap_s, img_done, cap_done, n_captioned, n_uncaptioned)
                kth = fused[order[-1]] if len(order) == k else -np.inf
                done = bound == -np.inf or kth >= bound + slack or depth >= n_eligible
            if done:
                break
            depth = min(2 * depth, n_eligible)
        ranked = np.zeros(
            len(order), dtype=[("id", np.int64), ("score", float), ("cl", float), ("cm", float)]
        )
        ranked["id"], ranked["score"], ranked["cl"], ranked["cm"] = (
            cand[order],
            fused[order],
            cl[order],
            cm[order],
        )
        if a == 0.0 and q_cl64 is not None:  # CL was not needed for ranking; report it for captioned hits
            hc = has_cap[order]
            if hc.any():
                ranked["cl"][hc] = index.caption_vectors(ranked["id"][hc]).astype(np.float64) @ q_cl64
        return ranked, {"depth": int(depth), "rounds": rounds, "candidates": len(cand)}

    @staticmethod
    def _outside_bound(
        a: float,
        img_s: np.ndarray,
        cap_s: np.ndarray,
        img_done: bool,
        cap_done: bool,
        n_captioned: int,
        n_uncaptioned: int,
    ) -> float:
        """Upper bound of the fused score of any eligible image in neither list (-inf: there is none).

        A list is "done" when it holds every eligible image of its table (it returned fewer than D)."""
        if img_done and (a < 1.0 or n_uncaptioned > 0):
            return -np.inf  # the image list covers every eligible image
        cm_d = float(img_s[-1]) if len(img_s) else -np.inf
        cl_d = float(cap_s[-1]) if len(cap_s) else -np.inf
        bounds = []
        if n_captioned and not cap_done:  # captioned images may hide outside the caption list
            bounds.append(cm_d if a == 0.0 else cl_d if a == 1.0 else a * cl_d + (1.0 - a) * cm_d)
        elif n_captioned and a == 0.0:
            bounds.append(cm_d)
        if n_uncaptioned:  # imputed CL = CM, so fused = CM <= CM_D
            bounds.append(cm_d)
        return max(bounds, default=-np.inf)

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
        """The stored image vector of an indexed image (for Tag/Caption by image id)."""
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
        prepared batch by batch as it arrives and committed once. ``start`` numbers the items in messages."""
        prepared = [self._prepare(start + n, item) for n, item in enumerate(items)]
        if not prepared:
            return PreparedImages([], np.zeros((0, self.index.dim), np.float32), [], None)
        vecs, feats, predicted = self._encode_new(np.stack([p[1] for p in prepared]))
        captioned = [n for n, p in enumerate(prepared) if p[0].has_caption]
        cap_rows: list[np.ndarray | None] = [None] * len(prepared)
        if captioned:
            cap_vecs = self.bundle.cl_vectors([prepared[n][0].caption for n in captioned], "en")
            for n, v in zip(captioned, cap_vecs, strict=True):
                cap_rows[n] = v
        metas = [
            replace(p[0], tags=tuple(dict.fromkeys([*p[0].tags, *tags])))
            for p, tags in zip(prepared, predicted, strict=True)
        ]
        return PreparedImages(metas, vecs, cap_rows, feats)

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
        with (
            self._writes
        ):  # writers queue here, not at the RW lock, so a waiting writer never stalls searches
            with self._lock.write():
                self.index.add(metas, vecs, caps, features=feats)
            self._persist()
        return [m.id for m in metas]

    def _encode_new(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, list[tuple[str, ...]]]:
        """Index vectors, backbone features (stored so Tag/Caption by id never read a file; None when the bundle
        has no feature output) and, when the bundle has a tagger, each image's predicted Chinese tags (stored in
        the metadata so Search can filter on them, exactly as the indexer does)."""
        tagger = getattr(self.bundle, "tagger", None)
        with_features = bool(getattr(self.bundle, "has_features", False))
        vecs, feats, tags = [], [], []
        for i in range(0, len(pixels), self.encode_batch):
            batch = pixels[i : i + self.encode_batch]
            if not with_features:
                vecs.append(self.bundle.encode_pixels(batch))
                tags.extend(() for _ in batch)
                continue
            emb, feat = self.bundle.encode_pixels_with_features(batch)
            vecs.append(emb)
            feats.append(feat)
            if tagger is None:
                tags.extend(() for _ in batch)
            else:
                tags.extend(confident_tags(tagger.predict(feat), self.min_tag_score))
        return np.concatenate(vecs), (np.concatenate(feats) if feats else None), tags

    def _prepare(self, n: int, item: NewImage) -> tuple[ImageMeta, np.ndarray]:
        """Metadata and model input pixels ([3,S,S] or [10,3,S,S], a few hundred KB whatever the image)."""
        lim = self.limits
        data = item.image_bytes
        image = decode_image_bytes(data, self.bundle.preprocess_config, lim, f"item {n}")
        image_id = (item.id or "").strip() or hashlib.sha256(data).hexdigest()
        if len(image_id) > lim.max_id_chars:
            raise InvalidArgument(f"item {n}: id longer than {lim.max_id_chars} characters")
        caption = (item.caption or "").strip()
        if len(caption) > lim.max_caption_chars:
            raise InvalidArgument(f"item {n}: caption longer than {lim.max_caption_chars} characters")
        tags = tuple(t.strip() for t in item.tags if t.strip())
        meta = ImageMeta(image_id, item.uri or "", (caption,) if caption else (), tags)
        return meta, image

    def delete(self, ids: Sequence[str]) -> Deleted:
        """Remove images -> (deleted ids, ids not found)."""
        with self._writes:
            with self._lock.write():
                deleted, missing = self.index.remove(ids)
                if deleted and self.index.needs_compaction():
                    self.index.compact()
            if deleted:
                self._persist()
        return Deleted(deleted, missing)

    def save(self) -> None:
        """Persist now (no-op when nothing changed since the last save)."""
        self._persist()

    def _persist(self) -> None:
        if not self.persist:
            return
        with self._save_lock, self._lock.read():  # save does not mutate; writers wait, searches go on
            if self.index.version == self._saved_version:
                return  # a concurrent caller already saved this version
            try:
                self.index.save(self.folder)
            except OSError as e:
                log.exception("saving the index to %s failed", self.folder)
                raise IndexPersistError(
                    f"index change is live but saving to {self.folder} failed: {e}"
                ) from e
            self._saved_version = self.index.version

    @property
    def annotator(self) -> Any:
        """Tagging and captioning of query images and indexed images (``xlsearch.search.annotate.Annotator``)."""
        with self._save_lock:
            if self._annotator is None:
                from xlsearch.search.annotate import Annotator

                self._annotator = Annotator(self, self._annotate_limits)
            return self._annotator

    def stats(self) -> dict[str, Any]:
        with self._lock.read():
            ix = self.index
            return {
                "images": ix.count,
                "captions": ix.caption_count,
                "dim": ix.dim,
                "factory": ix.factory,
                "exact": ix.exact,
                "bundle_hash": ix.bundle_hash,
                "index_hash": ix.index_hash,
                "index_version": ix.version,
                "default_alpha": float(self.bundle.alpha),
                "cl_space": ix.cl_space,
                "tags": len(ix.tag_counts()),
                "folder": str(self.folder) if self.folder else "",
                "saved_version": self._saved_version,
                "created": ix.created,
                "updated": ix.updated,
            }


def decode_image_bytes(data: Any, cfg: Any, limits: Limits, what: str = "image") -> np.ndarray:
    """Validated decode of untrusted bytes straight to the model input (``xlsearch.encode.decode.decode_pixels``, with
    ``cfg`` the bundle's PreprocessConfig): size, pixel, side and aspect limits are checked before decoding."""
    if not isinstance(data, bytes | bytearray | memoryview) or not len(data):
        raise InvalidImage(f"{what}: image_bytes must be non-empty bytes")
    if len(data) > limits.max_image_bytes:
        raise ImageTooLarge(f"{what}: {len(data)} bytes; the limit is {limits.max_image_bytes}")
    try:
        return decode_pixels(data, cfg, limits.decode, what)
    except PixelLimitError as e:
        raise ImageTooLarge(str(e)) from None
    except ImageError as e:
        raise InvalidImage(str(e)) from None


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, np.float32), np.zeros(0, np.int64)


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
