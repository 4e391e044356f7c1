"""Plain request/response types between the converters (protobuf) and the service (engine + cache).

They decouple the wire format from the engine's own classes and are what the cache stores (as JSON).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

MODES = ("CL", "CM", "CLM")


@dataclass(frozen=True)
class SearchQuery:
    query: str  # normalised (see cache.normalize_query)
    top_k: int
    mode: str  # CL | CM | CLM
    alpha: float | None = None
    tags: tuple[str, ...] = ()


@dataclass
class HitRecord:
    id: str
    uri: str
    score: float
    cl_score: float
    cm_score: float
    caption: str
    tags: list[str]
    has_caption: bool

    @classmethod
    def from_engine(cls, hit: Any) -> HitRecord:
        caption = getattr(hit, "caption", "") or ""
        return cls(
            id=str(hit.id),
            uri=str(getattr(hit, "uri", "") or ""),
            score=float(hit.score),
            cl_score=float(getattr(hit, "cl_score", 0.0) or 0.0),
            cm_score=float(getattr(hit, "cm_score", 0.0) or 0.0),
            caption=str(caption),
            tags=[str(t) for t in (getattr(hit, "tags", None) or [])],
            has_caption=bool(getattr(hit, "has_caption", bool(caption))),
        )


@dataclass
class SearchAnswer:
    hits: list[HitRecord]
    alpha: float
    index_version: int
    timings: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    total_seconds: float = 0.0

    @classmethod
    def from_engine(cls, result: Any) -> SearchAnswer:
        return cls(
            hits=[HitRecord.from_engine(h) for h in result.hits],
            alpha=float(result.alpha),
            index_version=int(result.index_version),
            timings={str(k): float(v) for k, v in (result.timings or {}).items()},
        )

    def to_json(self) -> bytes:
        """What the cache keeps: the ranking, not the timings of the call that computed it."""
        body = {
            "hits": [asdict(h) for h in self.hits],
            "alpha": self.alpha,
            "index_version": self.index_version,
        }
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> SearchAnswer:
        body = json.loads(raw)
        return cls(
            hits=[HitRecord(**h) for h in body["hits"]],
            alpha=float(body["alpha"]),
            index_version=int(body["index_version"]),
            cached=True,
        )


@dataclass(frozen=True)
class ImageUpload:
    image_bytes: bytes
    id: str = ""
    caption: str = ""
    uri: str = ""


@dataclass(frozen=True)
class AddOutcome:
    ids: list[str]
    index_version: int


@dataclass(frozen=True)
class DeleteOutcome:
    deleted: int
    not_found: list[str]
    index_version: int


@dataclass(frozen=True)
class StatsView:
    images: int
    captions: int
    dim: int
    factory: str
    bundle_hash: str
    index_hash: str
    index_version: int
    default_alpha: float
    cl_space: str
    cache_backend: str
    cache_connected: bool


@dataclass(frozen=True)
class ImageSource:
    """Tag/Caption input: exactly one of the image bytes and the id of an indexed image (the service checks)."""

    image_bytes: bytes = b""
    image_id: str = ""


@dataclass(frozen=True)
class TagCall:
    image: ImageSource
    k: int | None  # None: the tagger's predicted tag count
    user_tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class CaptionCall:
    image: ImageSource
    n_best: int
    recommend: bool


@dataclass(frozen=True)
class TagView:
    tag: str
    score: float
    english: tuple[str, ...]


@dataclass(frozen=True)
class SentenceView:
    text: str
    score: float


@dataclass
class AnnotationView:
    tags: list[TagView] = field(default_factory=list)
    captions: list[SentenceView] = field(default_factory=list)
    recommended: list[SentenceView] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_engine(cls, a: Any) -> AnnotationView:
        return cls(
            tags=[TagView(t.tag, t.score, tuple(t.english)) for t in a.tags],
            captions=[SentenceView(c.text, c.score) for c in a.captions],
            recommended=[SentenceView(r.text, r.score) for r in a.recommended],
            timings=dict(a.timings),
        )
