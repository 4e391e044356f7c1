"""Protobuf <-> plain types. No validation beyond what the wire format forces; the service checks the values."""

from __future__ import annotations

from xlsearch.errors import InvalidArgument
from xlsearch.v1 import search_pb2 as pb
from xlsearch_server.types import (
    AddOutcome,
    AnnotationView,
    CaptionCall,
    DeleteOutcome,
    ImageSource,
    ImageUpload,
    SearchAnswer,
    StatsView,
    TagCall,
)

MODE_FROM_PROTO = {pb.MATCH_MODE_UNSPECIFIED: "CLM", pb.CL: "CL", pb.CM: "CM", pb.CLM: "CLM"}


def mode_from_proto(value: int) -> str:
    try:
        return MODE_FROM_PROTO[value]
    except KeyError:
        raise InvalidArgument(f"unknown match mode {value}; use CL, CM or CLM") from None


def search_request_fields(req: pb.SearchRequest) -> tuple[str, int, str, float | None, list[str]]:
    """(raw query, top_k, mode, alpha or None, tags) of a request, before the service validates them."""
    alpha = req.alpha if req.HasField("alpha") else None
    return req.query, int(req.top_k), mode_from_proto(req.mode), alpha, list(req.tags)


def search_response(answer: SearchAnswer) -> pb.SearchResponse:
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
    )


def image_upload(req: pb.AddImageRequest) -> ImageUpload:
    return ImageUpload(image_bytes=req.image_bytes, id=req.id, caption=req.caption, uri=req.uri)


def add_images_response(outcome: AddOutcome) -> pb.AddImagesResponse:
    return pb.AddImagesResponse(ids=outcome.ids, added=len(outcome.ids), index_version=outcome.index_version)


def delete_images_response(outcome: DeleteOutcome) -> pb.DeleteImagesResponse:
    return pb.DeleteImagesResponse(
        deleted=outcome.deleted, not_found=outcome.not_found, index_version=outcome.index_version
    )


def stats_response(stats: StatsView) -> pb.GetStatsResponse:
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


def image_source(ref: pb.ImageRef) -> ImageSource:
    which = ref.WhichOneof("source")
    if which == "image_bytes":
        return ImageSource(image_bytes=ref.image_bytes)
    if which == "image_id":
        return ImageSource(image_id=ref.image_id)
    return ImageSource()


def tag_call(req: pb.TagRequest) -> TagCall:
    k = int(req.k) if req.HasField("k") else None
    return TagCall(image_source(req.image), k, tuple(req.user_tags))


def caption_call(req: pb.CaptionRequest) -> CaptionCall:
    return CaptionCall(image_source(req.image), int(req.n_best), bool(req.recommend))


def tag_response(view: AnnotationView) -> pb.TagResponse:
    return pb.TagResponse(
        tags=[pb.TagScore(tag=t.tag, score=t.score, english=list(t.english)) for t in view.tags]
    )


def caption_response(view: AnnotationView) -> pb.CaptionResponse:
    return pb.CaptionResponse(
        captions=[pb.ScoredSentence(text=c.text, score=c.score) for c in view.captions],
        recommended=[pb.ScoredSentence(text=r.text, score=r.score) for r in view.recommended],
    )
