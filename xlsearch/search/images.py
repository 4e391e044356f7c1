"""Untrusted image bytes -> the model's input pixels, within the limits (the one validated decode of the serving
side; ``xlsearch.encode.decode.decode_pixels`` does the bounded work)."""

from __future__ import annotations

from typing import Any

import numpy as np

from xlsearch.encode.decode import decode_pixels
from xlsearch.encode.preprocess import ImageError, PixelLimitError, PreprocessConfig
from xlsearch.search.errors import ImageTooLarge, InvalidImage
from xlsearch.search.types import Limits


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
