"""The one validated path from untrusted image bytes (or a file) to the model input tensor. Torch-free.

`decode_pixels(source, cfg, limits)` checks the header before any pixel is decoded: more than `max_pixels` pixels is
a PixelLimitError (a decompression bomb, whatever its size: the server answers RESOURCE_EXHAUSTED), an empty image,
a side above `max_side` or an aspect ratio above `max_aspect` an ImageError (INVALID_ARGUMENT). After the decode it
allocates nothing larger than a few resize_size^2 buffers and converts only the crops to float:

- up to LARGE_PIXELS: `preprocess` (exact for normal images, crop windows through a box for extreme aspect ratios);
- larger: the region each crop window needs, in the file's own orientation, is converted to RGB strip by strip
  and reduced (JPEG `draft` at decode time, then `Image.reduce`) to at least REDUCING_GAP times the resized size,
  as Pillow's `resize(reducing_gap=3.0)` does; then it is oriented and resized. Close to the full resize (measured
  in tests/test_preprocess.py), not equal to it.

What remains unbounded by the output is the decoded image itself: at most max_pixels times its bytes per pixel (PIL
keeps 1-bit, greyscale and palette images in 1 byte per pixel, RGB(A) in 4), less for a drafted JPEG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from xlsearch.encode.preprocess import (
    FILTER_SUPPORT,
    INTERPOLATIONS,
    LARGE_PIXELS,
    REDUCING_GAP,
    DecodeLimits,
    ImageError,
    PixelLimitError,
    Pos,
    PreprocessConfig,
    Source,
    _assemble,
    _convert_errors,
    _crops,
    _decode_errors,
    _file,
    _name,
    _orientation,
    _target_size,
    _to_rgb,
    _transpose,
    _windows,
    check_size,
)

__all__ = ["decode_pixels"]

Box = tuple[float, float, float, float]
Region = tuple[int, int, int, int]
SWAPPED = (5, 6, 7, 8)  # EXIF orientations that exchange width and height


def decode_pixels(
    source: Source, cfg: PreprocessConfig, limits: DecodeLimits | None = None, what: str | None = None
) -> np.ndarray:
    """Encoded bytes or a file path -> float32 (3,S,S) ("center") or (10,3,S,S) ("oversample"), equal to
    `preprocess(load_image(source), cfg)` up to LARGE_PIXELS. Raises PixelLimitError or ImageError (their messages
    start with `what`, default the path or "<bytes>") for bad input, nothing else."""
    limits = limits or DecodeLimits()
    what = what or _name(source)
    with _decode_errors(what):
        try:
            im = Image.open(_file(source), formats=limits.formats)
        except UnidentifiedImageError:
            accepted = ", ".join(limits.formats)
            raise ImageError(
                f"{what}: cannot decode image (corrupt, or not one of the accepted formats: {accepted})"
            ) from None
        except Image.DecompressionBombError as e:  # PIL's own check, at twice its warning threshold
            raise PixelLimitError(
                f"{what}: above max_pixels={limits.max_pixels} (decompression bomb guard; PIL: {e})"
            ) from None
    try:
        with _decode_errors(what):
            w, h = im.size
            check_size(w, h, limits, what)
            large = w * h > LARGE_PIXELS
            draft = _draft(im, cfg) if large and im.format in ("JPEG", "MPO") else 1
            im.load()
            orientation = _orientation(im)
        with _convert_errors(what):
            oriented = (h, w) if orientation in SWAPPED else (w, h)
            target = _target_size(*oriented, cfg)
            windows = _windows(target, cfg)
            positions = list(dict.fromkeys(p for p, _ in windows))
            if large:
                crops = _large_crops(im, (w, h), draft, orientation, target, positions, cfg)
            else:
                crops = _crops(_transpose(_to_rgb(im), orientation), target, positions, cfg)
            return _assemble(crops, windows, cfg)
    finally:
        im.close()


def _draft(im: Image.Image, cfg: PreprocessConfig) -> int:
    """JPEG: decode at 1/2, 1/4 or 1/8 scale while that keeps REDUCING_GAP x the resized size (the smallest
    source/target ratio is min(w, h) / resize_size in both resize modes, whatever the orientation)."""
    w, h = im.size
    k = min(w, h) / cfg.resize_size / REDUCING_GAP
    if k < 2:
        return 1
    drafted = im.draft(None, (math.ceil(w / k), math.ceil(h / k)))
    return round(w / drafted[1][2]) if drafted else 1


def _orient_point(x: float, y: float, w: float, h: float, o: int) -> tuple[float, float]:
    """(x, y) in a w x h image as stored -> after EXIF orientation `o`."""
    maps = {2: (w - x, y), 3: (w - x, h - y), 4: (x, h - y), 5: (y, x), 6: (h - y, x), 7: (h - y, w - x)}
    return (y, w - x) if o == 8 else maps.get(o, (x, y))


def _unorient_point(u: float, v: float, w: float, h: float, o: int) -> tuple[float, float]:
    """Inverse of `_orient_point` (w, h: the stored size)."""
    maps = {2: (w - u, v), 3: (w - u, h - v), 4: (u, h - v), 5: (v, u), 6: (v, h - u), 7: (w - v, h - u)}
    return (w - v, u) if o == 8 else maps.get(o, (u, v))


def _map_box(box: Box, point: Callable[[float, float], tuple[float, float]]) -> Box:
    (ax, ay), (bx, by) = point(box[0], box[1]), point(box[2], box[3])
    return min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)


def _overlap(a: Region, b: Region) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _merge(regions: list[tuple[Region, list[Pos]]]) -> list[tuple[Region, list[Pos]]]:
    """Overlapping regions become their union, so each source pixel is converted once."""
    out: list[tuple[Region, list[Pos]]] = []
    for region, members in regions:
        i = 0
        while i < len(out):
            other, theirs = out[i]
            if _overlap(region, other):
                region = (*map(min, region[:2], other[:2]), *map(max, region[2:], other[2:]))  # type: ignore[assignment]
                members = theirs + members
                del out[i]
                i = 0
            else:
                i += 1
        out.append((region, members))
    return out


def _large_crops(
    im: Image.Image,
    size: Pos,
    draft: int,
    orientation: int,
    target: Pos,
    positions: Sequence[Pos],
    cfg: PreprocessConfig,
) -> dict[Pos, np.ndarray]:
    """uint8 crop windows of a large decoded (maybe drafted) image. `size`: the header size; `draft`: the JPEG
    draft scale. Boxes go from the oriented target back to the stored frame, where regions are converted and
    reduced by `factor`; each region is then oriented and the windows resized out of it."""
    (w0, h0), (tw, th), s = size, target, cfg.image_size
    ow, oh = (h0, w0) if orientation in SWAPPED else (w0, h0)
    kx, ky = ow / tw, oh / th  # original pixels per target pixel, oriented axes
    stored = (ky, kx) if orientation in SWAPPED else (kx, ky)  # the same along the stored axes
    scale = [k / draft for k in stored]  # decoded pixels per target pixel
    factor = tuple(max(1, int(k / REDUCING_GAP)) for k in scale)
    support = FILTER_SUPPORT[cfg.interpolation]
    margin = [f * (support * max(k / f, 1.0) + 2) for f, k in zip(factor, scale, strict=True)]
    boxes: dict[Pos, Box] = {}
    regions: list[tuple[Region, list[Pos]]] = []
    for x, y in positions:
        box = _map_box(
            (x * kx, y * ky, (x + s) * kx, (y + s) * ky),
            lambda u, v: _unorient_point(u, v, w0, h0, orientation),
        )
        box = boxes[(x, y)] = (box[0] / draft, box[1] / draft, box[2] / draft, box[3] / draft)
        grown = (
            max(0, math.floor(box[0] - margin[0])),
            max(0, math.floor(box[1] - margin[1])),
            min(im.width, math.ceil(box[2] + margin[0])),
            min(im.height, math.ceil(box[3] + margin[1])),
        )
        regions.append((grown, [(x, y)]))
    resample = INTERPOLATIONS[cfg.interpolation]
    out = {}
    for region, members in _merge(regions):
        rx, ry = region[:2]
        canvas = _to_rgb(im, region, factor)  # type: ignore[arg-type]
        cw, ch = canvas.size
        oriented = _transpose(canvas, orientation)
        for p in members:
            b = boxes[p]
            rel = (
                (b[0] - rx) / factor[0],
                (b[1] - ry) / factor[1],
                (b[2] - rx) / factor[0],
                (b[3] - ry) / factor[1],
            )
            ob = _map_box(rel, lambda u, v, cw=cw, ch=ch: _orient_point(u, v, cw, ch, orientation))
            ob = (max(0.0, ob[0]), max(0.0, ob[1]), min(oriented.width, ob[2]), min(oriented.height, ob[3]))
            out[p] = np.asarray(oriented.resize((s, s), resample, box=ob))
    return out
