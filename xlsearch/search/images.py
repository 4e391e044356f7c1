"""Untrusted image bytes -> the model's input pixels, within the limits (the one validated decode of the serving
side; ``xlsearch.encode.decode.decode_pixels`` does the bounded work)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from xlsearch.common.timing import StageTimer
from xlsearch.encode.decode import decode_pixels
from xlsearch.encode.preprocess import ImageError, PixelLimitError, PreprocessConfig
from xlsearch.search.errors import ImageTooLarge, InvalidImage
from xlsearch.search.types import ImageRef, Limits, QueryVectors


def decode_image_bytes(data: Any, cfg: PreprocessConfig, limits: Limits, what: str = "image") -> np.ndarray:
    """[3,S,S] (or [10,3,S,S]) pixels for the bundle's preprocessing ``cfg``: byte, pixel, side and aspect limits
    are checked before decoding; a bomb of any size is ImageTooLarge (RESOURCE_EXHAUSTED)."""
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


def image_query_vectors(
    bundle: Any,
    limits: Limits,
    ref: ImageRef,
    stored_vector: Callable[[str], np.ndarray],
    timer: StageTimer | None = None,
) -> QueryVectors:
    """(CM, CL) query vectors of a search by image: the image's vector in the bundle's image space as the CM query
    (an indexed image's stored vector, ``stored_vector(id)``: its file is never read). In the visual CL space the
    same vector also scores the captions (image vs caption); the sentence space has no CL query (None)."""
    timer = timer or StageTimer()
    if ref.image_id:
        with timer("search"):
            q = stored_vector(ref.image_id)  # NotFound for an unknown id
    else:
        with timer("decode_image"):
            pixels = decode_image_bytes(ref.image_bytes, bundle.preprocess_config, limits, "image")
        with timer("encode_image"):
            q = bundle.encode_pixels(pixels[None])[0]
    return q, (q if bundle.cl_space == "visual" else None)  # type: ignore[return-value]
