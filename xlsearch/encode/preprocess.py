"""Image decoding and preprocessing with PIL + numpy only (serving side; never imports torch).

`preprocess` reproduces torchvision's `Resize(resize_size) -> CenterCrop/TenCrop -> ToTensor -> Normalize` on PIL
images to within float rounding, so features computed offline and at serving time agree. Only the crop windows are
converted to float, and a resized image above BOX_BUDGET * resize_size^2 pixels (extreme aspect ratios: 1x32
resizes to 256x8192) is never built: each window is resized from the source rows and columns it needs
(`Image.resize(box=...)`), the two filter passes in the order Pillow's full resize runs them (it rounds to uint8 in
between, so the order matters). That equals resize-then-crop up to rare 1/255 steps: Pillow takes the box as
float32, which moves a filter coefficient by ~1e-7 and, once in ~10^4 values, a rounding.

Untrusted bytes go through `xlsearch.encode.decode.decode_pixels` (limits checked from the header, large sources reduced);
`load_image` is for trusted files.
"""

from __future__ import annotations

import functools
import io
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from PIL import Image

from xlsearch.errors import Code, InvalidArgument

__all__ = [
    "DEFAULT_MAX_ASPECT",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_SIDE",
    "SAFE_FORMATS",
    "DecodeLimits",
    "ImageError",
    "PixelLimitError",
    "PreprocessConfig",
    "check_size",
    "load_image",
    "preprocess",
    "preprocess_batch",
]

# Same threshold as PIL's own decompression-bomb warning (~89.5 megapixels).
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_MAX_SIDE = 32768  # longer than any camera's side; a 32:1 banner at this width is still 1024 px high
DEFAULT_MAX_ASPECT = 32.0
# Formats decode_pixels opens. PIL would also try EPS (through a Ghostscript subprocess), PSD, FITS, ... on bytes
# from a client: only these are accepted (JPEG includes camera MPO files).
SAFE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP")
LARGE_PIXELS = 1 << 22  # sources above this (~2048x2048) are drafted/reduced instead of resized in one step
BOX_BUDGET = 8  # resized images up to 8 * resize_size^2 pixels (8:1) are resized whole, then cropped
REDUCING_GAP = 3.0
STRIP_PIXELS = 1 << 19  # mode conversion of large sources, this many pixels at a time
CROPS = ("center", "oversample")
INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
FILTER_SUPPORT = {"bicubic": 2.0, "bilinear": 1.0}  # Pillow's, in source pixels at scale <= 1
RESIZE_MODES = ("shortest", "squash")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
ORIENTATIONS = {  # EXIF orientation -> transpose, as ImageOps.exif_transpose
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
Pos = tuple[int, int]  # (left, top) of a crop window in the resized image


class ImageError(InvalidArgument):
    """An image could not be read: missing, corrupt, unsupported or too large."""


class PixelLimitError(ImageError):
    """More pixels than allowed: a decompression bomb."""

    code = Code.RESOURCE_EXHAUSTED


@dataclass(frozen=True)
class DecodeLimits:
    """Checked from the header, before decoding: pixel count (PixelLimitError), longest side, aspect ratio and
    format (ImageError)."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_side: int = DEFAULT_MAX_SIDE
    max_aspect: float = DEFAULT_MAX_ASPECT
    formats: tuple[str, ...] = SAFE_FORMATS


@dataclass
class PreprocessConfig:
    """How pixels are prepared for an image encoder. mean/std are per channel on the 0-1 scale.

    resize_mode "shortest" resizes the shorter side to `resize_size` (keeping the aspect ratio) and "squash" resizes
    to `resize_size` x `resize_size`; then `crop` takes the centre window or the ten oversampling windows.
    """

    image_size: int = 224
    resize_size: int = 256
    crop: str = "center"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def __post_init__(self) -> None:
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {self.crop!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {tuple(INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean/std need 3 values and std > 0, got mean={self.mean} std={self.std}")
        if not 0 < self.image_size <= self.resize_size:
            raise ValueError(f"need 0 < image_size <= resize_size, got {self.image_size}, {self.resize_size}")

    @property
    def num_crops(self) -> int:
        return 10 if self.crop == "oversample" else 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown PreprocessConfig keys: {sorted(unknown)}")
        return cls(**d)


# -- decoding ---------------------------------------------------------------------------------------------------
Source = str | os.PathLike[str] | bytes | bytearray | memoryview


def check_size(w: int, h: int, limits: DecodeLimits, what: str = "image") -> None:
    if w <= 0 or h <= 0:
        raise ImageError(f"{what}: empty image ({w}x{h})")
    if w * h > limits.max_pixels:
        raise PixelLimitError(
            f"{what}: {w}x{h} is {w * h} pixels, above max_pixels={limits.max_pixels} (decompression bomb guard)"
        )
    if max(w, h) > limits.max_aspect * min(w, h):
        raise ImageError(
            f"{what}: {w}x{h} has an aspect ratio of {max(w, h) / min(w, h):.0f}:1; "
            f"the limit is {limits.max_aspect:g}:1"
        )
    if max(w, h) > limits.max_side:
        raise ImageError(f"{what}: {w}x{h} has a side above {limits.max_side} px")


def load_image(
    source: Source, max_pixels: int = DEFAULT_MAX_PIXELS, exif_transpose: bool = True
) -> Image.Image:
    """Decode a file path or encoded bytes into an RGB image; transparency is composited onto white.

    Raises ImageError for missing/corrupt/unsupported data or images above `max_pixels` (checked from the header,
    before decoding). EXIF orientation is applied unless `exif_transpose=False`. For trusted files (training); the
    serving side uses `decode_pixels`.
    """
    what = _name(source)
    with _decode_errors(what), Image.open(_file(source)) as im:
        check_size(*im.size, DecodeLimits(max_pixels, sys.maxsize, math.inf), what)
        im.load()
        orientation = _orientation(im) if exif_transpose else 1
        return _transpose(_to_rgb(im), orientation)


def _name(source: Source) -> str:
    return "<bytes>" if isinstance(source, bytes | bytearray | memoryview) else os.fspath(source)


def _file(source: Source) -> Any:
    return io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else os.fspath(source)


@contextmanager
def _decode_errors(what: str) -> Iterator[None]:
    try:
        yield
    except (ImageError, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise PixelLimitError(f"{what}: decompression bomb refused ({e})") from None
    except (
        Exception
    ) as e:  # PIL's decoders raise many types (struct.error, IndexError, ...) for corrupt input
        raise ImageError(f"{what}: cannot decode image ({type(e).__name__}: {e})") from None


@contextmanager
def _convert_errors(what: str) -> Iterator[None]:
    try:
        yield
    except (ValueError, OSError) as e:  # a mode PIL cannot convert; anything else is a bug and stays visible
        if isinstance(e, ImageError):
            raise
        raise ImageError(f"{what}: cannot convert image ({type(e).__name__}: {e})") from None


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(0x0112, 1)  # as ImageOps.exif_transpose reads it
    except Exception:  # unreadable EXIF is metadata, not pixels: ignore it
        return 1
    return value if value in ORIENTATIONS else 1


# -- mode conversion --------------------------------------------------------------------------------------------
def _converter(im: Image.Image) -> Callable[[Image.Image], Image.Image]:
    """A pointwise conversion of (strips of) `im` to RGB; whole-image decisions (16-bit scaling) made once."""
    if im.mode.startswith(("I", "F")):  # 16/32-bit greyscale: rescale to 8 bit instead of clipping
        divide = im.mode.startswith("I;16") or im.getextrema()[1] > 255

        def grey(strip: Image.Image) -> Image.Image:
            a = np.asarray(strip, dtype=np.float64)
            a = a / 257.0 if divide else a
            return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8)).convert("RGB")

        return grey
    if im.mode not in ALPHA_MODES and "transparency" not in im.info:
        return lambda strip: strip.convert("RGB")

    def on_white(strip: Image.Image) -> Image.Image:
        rgba = strip.convert("RGBA")
        out = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        out.alpha_composite(rgba)
        return out.convert("RGB")

    return on_white


def _to_rgb(
    im: Image.Image, box: tuple[int, int, int, int] | None = None, factor: Pos = (1, 1)
) -> Image.Image:
    """RGB copy of `box` of `im` (transparency on white), reduced by `factor`; converted STRIP_PIXELS at a time."""
    x0, y0, x1, y1 = box or (0, 0, *im.size)
    fx, fy = factor
    if im.mode == "RGB" and "transparency" not in im.info and factor == (1, 1):
        return im.crop((x0, y0, x1, y1)) if box else im
    convert = _converter(im)
    rows = max(fy, STRIP_PIXELS // max(1, x1 - x0) // fy * fy)  # whole blocks of `reduce`
    if rows >= y1 - y0 and factor == (1, 1):
        return convert(im.crop((x0, y0, x1, y1)))
    out = Image.new("RGB", (-(-(x1 - x0) // fx), -(-(y1 - y0) // fy)))
    for y in range(y0, y1, rows):
        strip = convert(im.crop((x0, y, x1, min(y + rows, y1))))
        out.paste(strip.reduce(factor) if factor != (1, 1) else strip, (0, (y - y0) // fy))
    return out


def _transpose(im: Image.Image, orientation: int) -> Image.Image:
    method = ORIENTATIONS.get(orientation)
    return im if method is None else im.transpose(method)


# -- geometry ---------------------------------------------------------------------------------------------------
def _target_size(w: int, h: int, cfg: PreprocessConfig) -> Pos:
    if cfg.resize_mode == "squash":
        return cfg.resize_size, cfg.resize_size
    short, long = (
        (w, h) if w <= h else (h, w)
    )  # same integer arithmetic as torchvision's _compute_resized_output_size
    new_short, new_long = cfg.resize_size, int(cfg.resize_size * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def _windows(target: Pos, cfg: PreprocessConfig) -> list[tuple[Pos, bool]]:
    """(position, mirrored) of each output crop, torchvision's order: five crops (top-left, top-right, bottom-left,
    bottom-right, centre), then the five crops of the horizontally flipped image = mirrored crops at mirrored
    positions."""
    (w, h), s = target, cfg.image_size
    five = [
        (0, 0),
        (w - s, 0),
        (0, h - s),
        (w - s, h - s),
        (int(round((w - s) / 2.0)), int(round((h - s) / 2.0))),
    ]
    if cfg.crop == "center":
        return [(five[4], False)]
    return [(p, False) for p in five] + [((w - s - x, y), True) for x, y in five]


# -- resizing and cropping --------------------------------------------------------------------------------------
@functools.cache
def _pillow_vertical_first(h_shrinks: bool, w_shrinks: bool) -> bool | None:
    """Does Pillow's resize run the vertical pass first for this kind of resize? Probed once per kind on small
    images (Pillow 13 picks the order by the sizes: vertical first when the height shrinks and the width does not).
    None when the probes disagree (in Pillow 13, when both sides shrink): then we resize whole."""
    if h_shrinks and w_shrinks:
        return None
    rng = np.random.default_rng(0)
    answers = set()
    for w, h in ((7, 40), (40, 7), (23, 23)):
        tw, th = (w - 3 if w_shrinks else 2 * w + 5), (h - 3 if h_shrinks else 2 * h + 5)
        img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
        full = np.asarray(img.resize((tw, th), Image.Resampling.BICUBIC))
        v_first = img.resize((w, th), Image.Resampling.BICUBIC).resize((tw, th), Image.Resampling.BICUBIC)
        answers.add(bool(np.array_equal(full, np.asarray(v_first))))
    return answers.pop() if len(answers) == 1 else None


def _crops(
    rgb: Image.Image, target: Pos, windows: Iterable[Pos], cfg: PreprocessConfig
) -> dict[Pos, np.ndarray]:
    """uint8 HxWx3 crop windows of `rgb` resized to `target`."""
    (w, h), (tw, th), s = rgb.size, target, cfg.image_size
    resample = INTERPOLATIONS[cfg.interpolation]
    v_first = _pillow_vertical_first(th < h, tw < w)
    if tw * th <= BOX_BUDGET * cfg.resize_size**2 or v_first is None:
        full = np.asarray(rgb.resize(target, resample))
        return {(x, y): full[y : y + s, x : x + s] for x, y in windows}
    return {p: _box_crop(rgb, target, p, cfg, v_first) for p in windows}


def _box_crop(rgb: Image.Image, target: Pos, pos: Pos, cfg: PreprocessConfig, v_first: bool) -> np.ndarray:
    """One crop window of the resized image, computed from the source region it needs, one pass at a time in
    Pillow's order. A short axis (<= 2 * resize_size in the target) is resized whole, with the exact coefficients of
    the full resize; a long one through a box (its window plus the filter support, clipped to the image)."""
    s, resample, support = (
        cfg.image_size,
        INTERPOLATIONS[cfg.interpolation],
        FILTER_SUPPORT[cfg.interpolation],
    )
    spans = []  # per axis: (region lo, hi, box in0, in1 relative to lo, output length, crop offset after)
    for n_in, n_out, p in zip(rgb.size, target, pos, strict=True):
        if n_out <= 2 * cfg.resize_size:
            spans.append((0, n_in, 0.0, float(n_in), n_out, p))
            continue
        scale = n_in / n_out
        b0, b1 = p * scale, (p + s) * scale
        margin = support * max(scale, 1.0) + 2
        lo, hi = max(0, math.floor(b0 - margin)), min(n_in, math.ceil(b1 + margin))
        spans.append((lo, hi, b0 - lo, b1 - lo, s, 0))
    (x_lo, x_hi, *_), (y_lo, y_hi, *_) = spans
    img = rgb.crop((x_lo, y_lo, x_hi, y_hi))
    for axis in (1, 0) if v_first else (0, 1):
        _, _, in0, in1, n, _ = spans[axis]
        if axis == 0:
            img = img.resize((n, img.height), resample, box=(in0, 0, in1, img.height))
        else:
            img = img.resize((img.width, n), resample, box=(0, in0, img.width, in1))
    cx, cy = spans[0][5], spans[1][5]
    return np.asarray(img)[cy : cy + s, cx : cx + s]


def _assemble(
    crops: dict[Pos, np.ndarray], windows: list[tuple[Pos, bool]], cfg: PreprocessConfig
) -> np.ndarray:
    arrays = [_normalize(crops[p], cfg) for p, _ in windows]
    arrays = [a[:, :, ::-1] if mirrored else a for a, (_, mirrored) in zip(arrays, windows, strict=True)]
    return np.ascontiguousarray(arrays[0]) if cfg.crop == "center" else np.stack(arrays)


def _normalize(pixels: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """HWC uint8 -> CHW float32 with ToTensor + Normalize arithmetic."""
    x = np.asarray(pixels, dtype=np.float32) / np.float32(255.0)
    x = (x - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return x.transpose(2, 0, 1)


def preprocess(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """RGB PIL image -> float32 (3,S,S) for "center" or (10,3,S,S) for "oversample" (torchvision TenCrop order:
    five crops of the image, then five crops of its horizontal flip)."""
    if img.mode != "RGB":
        img = _to_rgb(img)  # same alpha handling as load_image
    target = _target_size(*img.size, cfg)
    windows = _windows(target, cfg)
    return _assemble(_crops(img, target, dict.fromkeys(p for p, _ in windows), cfg), windows, cfg)


def preprocess_batch(
    images: Iterable[Image.Image] | Sequence[Image.Image], cfg: PreprocessConfig
) -> np.ndarray:
    """Stack of `preprocess` outputs: (B,3,S,S) or (B,10,3,S,S)."""
    arrays = [preprocess(im, cfg) for im in images]
    if not arrays:
        shape = (3, cfg.image_size, cfg.image_size)
        return np.zeros((0, *((10,) if cfg.crop == "oversample" else ()), *shape), np.float32)
    return np.stack(arrays)
