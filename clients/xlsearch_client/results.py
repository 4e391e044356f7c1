"""Plain-Python results (frozen dataclasses) and their converters from the protobuf responses.

Scores travel as float32; the converters turn them into the shortest decimal that maps back to the same float32
(0.3, not 0.30000001192092896), so printed and JSON output stays readable and exact.
"""

from __future__ import annotations

import os
import struct
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

from xlsearch_client._proto import search_pb2 as pb


def float32(value: float) -> float:
    """The shortest decimal that rounds to the same float32 as `value`."""
    target = struct.unpack("<f", struct.pack("<f", value))[0]
    for digits in range(6, 10):
        short = float(f"{target:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", short))[0] == target:
            return short
    return target


def uri_path(uri: str) -> str | None:
    """The local file path a hit's `uri` names (`file://...` or a plain absolute path), else None."""
    if not uri:
        return None
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if not parsed.scheme and os.path.isabs(uri):
        return uri
    return None


@dataclass(frozen=True)
class Hit:
    id: str
    uri: str
    score: float  # fused score in the requested mode
    cl_score: float  # query vs the English caption
    cm_score: float  # query vs the pixels
    caption: str  # first English caption ("" when the image has none)
    tags: tuple[str, ...] = ()
    has_caption: bool = False

    @property
    def path(self) -> str | None:
        return uri_path(self.uri)


@dataclass(frozen=True)
class SearchResult:
    hits: tuple[Hit, ...]
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds (empty when cached)
    total_seconds: float = 0.0
    alpha: float = 0.0  # the CLM weight of CL actually used (1.0 for CL, 0.0 for CM)
    index_version: int = 0
    cached: bool = False
    mode: str = ""  # the mode actually used (CM for a search by image)
    offset: int = 0  # the first hit has rank offset + 1
    next_offset: int = 0  # offset of the next page when more hits follow; 0: this was the last page

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AddResult:
    ids: tuple[str, ...]  # in the order the images were sent
    added: int
    index_version: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DeleteResult:
    deleted: int
    not_found: tuple[str, ...]
    index_version: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Stats:
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Tag:
    tag: str  # Chinese tag
    score: float  # its predicted probability
    english: tuple[str, ...] = ()  # English counterparts (empty when none is known)


@dataclass(frozen=True)
class TagResult:
    tags: tuple[Tag, ...]  # best first: the predicted number of tags, or k

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Sentence:
    text: str  # Chinese
    score: float  # log-probability (generated captions) or cosine similarity (recommended sentences)


@dataclass(frozen=True)
class CaptionResult:
    captions: tuple[Sentence, ...]  # generated, best beam first
    recommended: tuple[Sentence, ...] = ()  # nearest known sentences (only when asked for), best first

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- converters ---------------------------------------------------------------------------------------------------


def hit_from_proto(msg: pb.Hit) -> Hit:
    return Hit(
        id=msg.id,
        uri=msg.uri,
        score=float32(msg.score),
        cl_score=float32(msg.cl_score),
        cm_score=float32(msg.cm_score),
        caption=msg.caption,
        tags=tuple(msg.tags),
        has_caption=msg.has_caption,
    )


def search_result_from_proto(msg: pb.SearchResponse) -> SearchResult:
    return SearchResult(
        hits=tuple(hit_from_proto(h) for h in msg.hits),
        timings={t.stage: t.seconds for t in msg.timings},
        total_seconds=msg.total_seconds,
        alpha=float32(msg.alpha),
        index_version=msg.index_version,
        cached=msg.cached,
        mode=pb.MatchMode.Name(msg.mode) if msg.mode else "",
        offset=msg.offset,
        next_offset=msg.next_offset,
    )


def tag_result_from_proto(msg: pb.TagResponse) -> TagResult:
    return TagResult(tags=tuple(Tag(t.tag, float32(t.score), tuple(t.english)) for t in msg.tags))


def _sentences(msgs: Any) -> tuple[Sentence, ...]:
    return tuple(Sentence(s.text, float32(s.score)) for s in msgs)


def caption_result_from_proto(msg: pb.CaptionResponse) -> CaptionResult:
    return CaptionResult(captions=_sentences(msg.captions), recommended=_sentences(msg.recommended))


def add_result_from_proto(msg: pb.AddImagesResponse) -> AddResult:
    return AddResult(ids=tuple(msg.ids), added=msg.added, index_version=msg.index_version)


def delete_result_from_proto(msg: pb.DeleteImagesResponse) -> DeleteResult:
    return DeleteResult(deleted=msg.deleted, not_found=tuple(msg.not_found), index_version=msg.index_version)


def stats_from_proto(msg: pb.GetStatsResponse) -> Stats:
    return Stats(
        images=msg.images,
        captions=msg.captions,
        dim=msg.dim,
        factory=msg.factory,
        bundle_hash=msg.bundle_hash,
        index_hash=msg.index_hash,
        index_version=msg.index_version,
        default_alpha=float32(msg.default_alpha),
        cl_space=msg.cl_space,
        cache_backend=msg.cache_backend,
        cache_connected=msg.cache_connected,
    )
