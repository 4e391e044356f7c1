"""What the search layer refuses, as members of the one error family (``xlsearch.errors``)."""

from __future__ import annotations

from xlsearch.errors import Code, FailedPrecondition, Internal, InvalidArgument, NotFound

__all__ = [
    "ComponentMissing",
    "ImageTooLarge",
    "ImageUnavailable",
    "IndexPersistError",
    "InvalidArgument",
    "InvalidImage",
    "InvalidQuery",
    "NotFound",
]


class InvalidQuery(InvalidArgument):
    """Empty, whitespace-only, too long, not a string; without words or Chinese where the limits require them."""


class InvalidImage(InvalidArgument):
    """Image bytes that cannot be decoded, or an empty image, a side above ``max_image_side`` or an aspect ratio
    above ``max_image_aspect``."""


class ImageTooLarge(InvalidImage):
    """Image bytes or pixel count above the limits (a decompression bomb of any size)."""

    code = Code.RESOURCE_EXHAUSTED


class ImageUnavailable(FailedPrecondition):
    """An indexed image whose backbone feature the index does not hold (an index written before features were
    stored, or a bundle without a feature output): Tag/Caption need the image bytes instead."""


class ComponentMissing(FailedPrecondition):
    """The loaded bundle has no tagger / captioner."""


class IndexPersistError(Internal):
    """Saving the index failed. The change is live in memory and becomes durable with the next successful save."""
