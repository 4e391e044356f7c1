"""The one set of request and result types: the engine returns them, the service caches them, each transport's
converters turn them into its wire format. Plain dataclasses, no logic beyond (de)serialising a cached ranking."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np

from xlsearch.encode.preprocess import DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE, DecodeLimits
from xlsearch.index.image_index import ImageMeta

MODES = ("CL", "CM", "CLM")
STAGES = ("tokenize", "encode", "search", "fuse", "metadata")

QueryVectors = tuple[np.ndarray, np.ndarray]  # (CM vector [dim], CL vector [cl_dim])


@dataclass(frozen=True)
class Limits:
    """Every request limit, in one place; the server builds it from its settings (same field names), a library
    user gets these defaults. ``xlsearch.search.validate`` and the engine read nothing else."""

    # Search
    max_query_chars: int = 256
    max_top_k: int = 1000
    default_top_k: int = 10  # used when a request's top_k is 0
    max_tags: int = 32
    max_offset: int = 10_000  # paging: hits skipped before the page (offset + top_k images are ranked)
    require_words: bool = False  # refuse queries of symbols / emoji only (the server sets it)
    require_chinese: bool = False  # refuse queries without a Chinese character
    # Images (AddImages, Tag, Caption)
    max_image_bytes: int = 32 << 20
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_image_side: int = DEFAULT_MAX_SIDE
    max_image_aspect: float = DEFAULT_MAX_ASPECT
    max_caption_chars: int = 2048
    max_id_chars: int = 512
    # One AddImages stream
    max_images_per_call: int = 1000
    max_add_bytes: int = 256 << 20
    # Tag and Caption
    max_tag_k: int = 100
    max_user_tags: int = 64
    max_n_best: int = 10
    caption_beam_size: int = 3
    recommend_k: int = 5

    @property
    def decode(self) -> DecodeLimits:
        return DecodeLimits(self.max_image_pixels, self.max_image_side, self.max_image_aspect)

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        """The fields ``settings`` has (by name); the others keep their defaults."""
        names = cls.__dataclass_fields__
        return cls(**{n: getattr(settings, n) for n in names if hasattr(settings, n)})


# -- search -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchRequest:
    """A validated search (``xlsearch.search.validate.search_request`` makes one): the normalised query, top_k in
    range, the mode, alpha (CLM only; None: the bundle's), the tag filter (stripped, sorted, unique), the relevance
    cutoff (hits scoring below ``min_score`` are dropped; None: none), ``offset`` (hits skipped: the page starts
    at rank offset + 1) and, for a search by example, ``image``: the query image (bytes, or an indexed image's id,
    which is then left out of the results; ``query`` is "" and the mode CM: image-to-image similarity)."""

    query: str
    top_k: int = 10
    mode: str = "CLM"
    alpha: float | None = None
    tags: tuple[str, ...] = ()
    min_score: float | None = None
    offset: int = 0
    image: ImageRef | None = None

    @property
    def exclude_id(self) -> str:
        """The indexed image a "more like this" search leaves out of its results ("" for other searches)."""
        return self.image.image_id if self.image is not None else ""

    @property
    def image_key(self) -> str:
        """What identifies the query image in a cache key: ``id:<image id>`` or ``sha256:<hex of the bytes>``."""
        if self.image is None:
            return ""
        if self.image.image_id:
            return f"id:{self.image.image_id}"
        return "sha256:" + hashlib.sha256(self.image.image_bytes).hexdigest()


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
    cached: bool = False  # served from the result cache
    total_seconds: float = 0.0  # in the service, cache lookups included
    offset: int = 0  # rank of the first hit minus one
    next_offset: int = (
        0  # the next page's offset when more hits (above min_score) follow; 0: this is the last
    )

    def to_json(self) -> bytes:
        """What the result cache keeps: the ranking, not the timings of the call that computed it."""
        body = {
            "hits": [asdict(h) for h in self.hits],
            "alpha": self.alpha,
            "index_version": self.index_version,
            "mode": self.mode,
            "offset": self.offset,
            "next_offset": self.next_offset,
        }
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> SearchResult:
        body = json.loads(raw)
        hits = [Hit(**h) for h in body["hits"]]
        return cls(
            hits,
            {},
            float(body["alpha"]),
            int(body["index_version"]),
            str(body.get("mode", "CLM")),
            cached=True,
            offset=int(body.get("offset", 0)),
            next_offset=int(body.get("next_offset", 0)),
        )


# -- changes ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NewImage:
    image_bytes: bytes
    id: str = ""  # default: sha256 hex of image_bytes
    caption: str = ""  # English; encoded in the bundle's CL space
    uri: str = ""  # metadata only: never opened
    tags: tuple[str, ...] = ()


@dataclass
class PreparedImages:
    """New images validated and encoded, not yet in the index (``SearchEngine.prepare`` -> ``commit``)."""

    metas: list[ImageMeta]
    vectors: np.ndarray  # [n, dim]
    captions: list[np.ndarray | None]  # CL vectors, None for images without a caption
    features: np.ndarray | None  # [n, feature_dim] backbone features; None without a feature output


class Deleted(NamedTuple):
    deleted: list[str]
    not_found: list[str]


@dataclass(frozen=True)
class AddResult:
    ids: list[str]
    index_version: int


@dataclass(frozen=True)
class DeleteResult:
    deleted: int
    not_found: list[str]
    index_version: int


@dataclass(frozen=True)
class Stats:
    images: int
    captions: int
    dim: int
    factory: str
    exact: bool
    bundle_hash: str
    index_hash: str
    index_version: int
    default_alpha: float
    cl_space: str
    tags: int = 0  # distinct tags in the index
    folder: str = ""
    saved_version: int = -1
    created: str = ""
    updated: str = ""
    source_roots: tuple[
        str, ...
    ] = ()  # folders the indexer read the images from (thumbnails are served from them)
    cache_backend: str = ""  # filled in by the service
    cache_connected: bool = False


# -- tagging and captioning -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageRef:
    """Exactly one of the two: the image itself, or the id of an indexed image."""

    image_bytes: bytes = b""
    image_id: str = ""


@dataclass(frozen=True)
class TagRequest:
    image: ImageRef
    k: int | None = None  # None: the tagger's predicted tag count
    user_tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class CaptionRequest:
    image: ImageRef
    n_best: int = 0  # 0: one
    recommend: bool = False


@dataclass(frozen=True)
class TagItem:
    tag: str
    score: float
    english: tuple[str, ...]


@dataclass(frozen=True)
class SentenceItem:
    text: str
    score: float  # log-probability for generated captions, cosine for recommended sentences


@dataclass
class Annotation:
    tags: list[TagItem] = field(default_factory=list)
    captions: list[SentenceItem] = field(default_factory=list)
    recommended: list[SentenceItem] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
