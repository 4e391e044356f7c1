"""Protobuf <-> plain types. No validation beyond what the wire format forces; the service checks the values."""

from __future__ import annotations

from typing import Any

from xlsearch.errors import InvalidArgument
from xlsearch.search.types import (
    AddResult,
    Annotation,
    CaptionRequest,
    DeleteResult,
    ImageRef,
    NewImage,
    SearchResult,
    Stats,
    TagRequest,
)
from xlsearch.v1 import search_pb2 as pb

MODE_FROM_PROTO = {pb.MATCH_MODE_UNSPECIFIED: None, pb.CL: "CL", pb.CM: "CM", pb.CLM: "CLM"}
MODE_TO_PROTO = {"CL": pb.CL, "CM": pb.CM, "CLM": pb.CLM}


def mode_from_proto(value: int) -> str | None:
    """None for unspecified: the validation's default (CLM for a text, CM for an image)."""
    try:
        return MODE_FROM_PROTO[value]
    except KeyError:
        raise InvalidArgument(f"unknown match mode {value}; use CL, CM or CLM") from None


def search_request_fields(req: pb.SearchRequest) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments of ``SearchService.parse_query`` (raw query, top_k or None, mode or None, alpha or None,
    tags; min_score, offset, image), before the service validates them. proto3 cannot tell an unset top_k from 0:
    0 means the default."""
    alpha = req.alpha if req.HasField("alpha") else None
    min_score = req.min_score if req.HasField("min_score") else None
    image = image_ref(req.image) if req.HasField("image") else None
    args = (req.query, int(req.top_k) or None, mode_from_proto(req.mode), alpha, list(req.tags))
    return args, {"min_score": min_score, "offset": int(req.offset), "image": image}


def search_response(answer: SearchResult) -> pb.SearchResponse:
    return pb.SearchResponse(
        hits=[
            pb.Hit(
                id=h.id,
                uri=h.uri,
                score=h.score,
                cl_score=h.cl_score,
                cm_score=h.cm_score,
                caption=h.caption,
                tags=h.tags,
                has_caption=h.has_caption,
            )
            for h in answer.hits
        ],
        timings=[pb.Timing(stage=stage, seconds=seconds) for stage, seconds in answer.timings.items()],
        total_seconds=answer.total_seconds,
        alpha=answer.alpha,
        index_version=answer.index_version,
        cached=answer.cached,
        mode=MODE_TO_PROTO.get(answer.mode, pb.MATCH_MODE_UNSPECIFIED),
        offset=answer.offset,
        next_offset=answer.next_offset,
    )


def new_image(req: pb.AddImageRequest) -> NewImage:
    return NewImage(image_bytes=req.image_bytes, id=req.id, caption=req.caption, uri=req.uri)


def add_images_response(outcome: AddResult) -> pb.AddImagesResponse:
    return pb.AddImagesResponse(ids=outcome.ids, added=len(outcome.ids), index_version=outcome.index_version)


def delete_images_response(outcome: DeleteResult) -> pb.DeleteImagesResponse:
    return pb.DeleteImagesResponse(
        deleted=outcome.deleted, not_found=outcome.not_found, index_version=outcome.index_version
    )


def stats_response(stats: Stats) -> pb.GetStatsResponse:
    return pb.GetStatsResponse(
        images=stats.images,
        captions=stats.captions,
        dim=stats.dim,
        factory=stats.factory,
        bundle_hash=stats.bundle_hash,
        index_hash=stats.index_hash,
        index_version=stats.index_version,
        default_alpha=stats.default_alpha,
        cl_space=stats.cl_space,
        cache_backend=stats.cache_backend,
        cache_connected=stats.cache_connected,
    )


def image_ref(ref: pb.ImageRef) -> ImageRef:
    which = ref.WhichOneof("source")
    if which == "image_bytes":
        return ImageRef(image_bytes=ref.image_bytes)
    if which == "image_id":
        return ImageRef(image_id=ref.image_id)
    return ImageRef()


def tag_request(req: pb.TagRequest) -> TagRequest:
    k = int(req.k) if req.HasField("k") else None
    return TagRequest(image_ref(req.image), k, tuple(req.user_tags))


def caption_request(req: pb.CaptionRequest) -> CaptionRequest:
    return CaptionRequest(image_ref(req.image), int(req.n_best), bool(req.recommend))


def tag_response(view: Annotation) -> pb.TagResponse:
    return pb.TagResponse(
        tags=[pb.TagScore(tag=t.tag, score=t.score, english=list(t.english)) for t in view.tags]
    )


def caption_response(view: Annotation) -> pb.CaptionResponse:
    return pb.CaptionResponse(
        captions=[pb.ScoredSentence(text=c.text, score=c.score) for c in view.captions],
        recommended=[pb.ScoredSentence(text=r.text, score=r.score) for r in view.recommended],
    )
