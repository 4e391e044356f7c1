"""The one validation of a search request: raw fields (from a transport or a library call) + ``Limits`` ->
``SearchRequest`` or InvalidQuery / InvalidArgument with a message for the client. Everything downstream (the
cache key, the engine) trusts a ``SearchRequest``."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np

from xlsearch.errors import InvalidArgument
from xlsearch.search.errors import ImageTooLarge, InvalidQuery
from xlsearch.search.types import MODES, ImageRef, Limits, SearchRequest


def normalize_query(text: str) -> str:
    """The query as searched and cached: NFKC (as the tokenisers do) with whitespace trimmed and collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def _has_han(text: str) -> bool:
    return any("CJK" in unicodedata.name(ch, "") for ch in text)


def _has_word_chars(text: str) -> bool:
    return any(unicodedata.category(ch)[0] in "LN" for ch in text)


def check_query(raw: Any, limits: Limits) -> str:
    """The normalised query text, or InvalidQuery."""
    if not isinstance(raw, str):
        raise InvalidQuery(f"query must be a string, got {type(raw).__name__}")
    query = normalize_query(raw)
    if not query:
        raise InvalidQuery("query is empty")
    if len(query) > limits.max_query_chars:
        raise InvalidQuery(f"query has {len(query)} characters; the limit is {limits.max_query_chars}")
    if limits.require_words and not _has_word_chars(query):
        raise InvalidQuery("query has no words (only symbols, punctuation or emoji)")
    if limits.require_chinese and not _has_han(query):
        raise InvalidQuery("query has no Chinese characters; this index is searched in Chinese")
    return query


def search_request(
    query: Any,
    top_k: Any = None,
    mode: Any = None,
    alpha: Any = None,
    tags: Sequence[Any] | None = None,
    limits: Limits | None = None,
    by_vectors: bool = False,
    *,
    min_score: Any = None,
    offset: Any = 0,
    image: ImageRef | None = None,
) -> SearchRequest:
    """``top_k`` None: ``limits.default_top_k``; ``mode`` None: CLM (CM for an image); ``alpha`` None: the
    bundle's; ``min_score`` None: no cutoff; ``offset``: hits skipped (paging); ``image``: search by an image
    (bytes or an indexed id) instead of a text; ``by_vectors``: the caller brings the query vectors (``query`` is
    not checked: it only names the search)."""
    lim = limits or Limits()
    image = check_image_ref(image, lim) if image is not None else None
    if image is not None:
        if str(query or "").strip():
            raise InvalidArgument("give a query text or a query image, not both")
        text = ""
    else:
        text = str(query or "") if by_vectors else check_query(query, lim)
    if top_k is None:
        top_k = lim.default_top_k
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer):
        raise InvalidArgument(f"top_k must be an integer, got {top_k!r}")
    if not 1 <= top_k <= lim.max_top_k:
        raise InvalidArgument(f"top_k must be between 1 and {lim.max_top_k} (0 for the default), got {top_k}")
    mode = mode.upper() if isinstance(mode, str) else mode
    if mode is None:
        mode = "CM" if image is not None else "CLM"
    if mode not in MODES:
        raise InvalidArgument(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if image is not None and mode != "CM":
        raise InvalidArgument(
            f"a search by image ranks by image-to-image similarity (mode CM); mode {mode} needs a text query"
        )
    if alpha is not None:
        if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.floating):
            raise InvalidArgument(f"alpha must be a number, got {alpha!r}")
        if not math.isfinite(alpha) or not 0.0 <= alpha <= 1.0:
            raise InvalidArgument(f"alpha must be in [0, 1], got {alpha}")
        alpha = round(float(alpha), 6)  # gRPC carries float32: 0.3 arrives as 0.30000001192...
    if min_score is not None:
        if isinstance(min_score, bool) or not isinstance(min_score, int | float | np.floating):
            raise InvalidArgument(f"min_score must be a number, got {min_score!r}")
        if not math.isfinite(min_score) or not -1.0 <= min_score <= 1.0:
            raise InvalidArgument(f"min_score must be in [-1, 1] (scores are cosines), got {min_score}")
        min_score = round(float(min_score), 6)  # float32 on the wire, as alpha
    if isinstance(offset, bool) or not isinstance(offset, int | np.integer):
        raise InvalidArgument(f"offset must be an integer, got {offset!r}")
    if not 0 <= offset <= lim.max_offset:
        raise InvalidArgument(f"offset must be between 0 and {lim.max_offset}, got {offset}")
    tags = list(tags or ())
    if len(tags) > lim.max_tags:
        raise InvalidArgument(f"{len(tags)} tags; the limit is {lim.max_tags}")
    if any(not isinstance(t, str) or not t.strip() for t in tags):
        raise InvalidArgument("tags must be non-empty strings (an empty tag would silently match nothing)")
    return SearchRequest(
        text,
        int(top_k),
        mode,
        alpha,
        tuple(sorted({t.strip() for t in tags})),
        min_score,
        int(offset),
        image,
    )


def check_image_ref(ref: ImageRef, limits: Limits) -> ImageRef:
    """Exactly one of image bytes (within ``max_image_bytes``; decoded later, with the decode limits) and the id
    of an indexed image."""
    has_bytes, image_id = bool(ref.image_bytes), (ref.image_id or "").strip()
    if has_bytes == bool(image_id):
        raise InvalidArgument("give exactly one of image.image_bytes and image.image_id")
    if has_bytes and len(ref.image_bytes) > limits.max_image_bytes:
        raise ImageTooLarge(f"image has {len(ref.image_bytes)} bytes; the limit is {limits.max_image_bytes}")
    if len(image_id) > limits.max_id_chars:
        raise InvalidArgument(f"image_id longer than {limits.max_id_chars} characters")
    return ImageRef(image_bytes=bytes(ref.image_bytes)) if has_bytes else ImageRef(image_id=image_id)


def fusion_weight(request: SearchRequest, default_alpha: float) -> float:
    """The weight of CL actually used: 1 for CL, 0 for CM, the request's alpha or the bundle's for CLM."""
    if request.mode == "CL":
        return 1.0
    if request.mode == "CM":
        return 0.0
    return float(default_alpha if request.alpha is None else request.alpha)
