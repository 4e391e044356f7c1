"""Image decoding and preprocessing with PIL + numpy only (serving side; never imports torch).

`preprocess` reproduces torchvision's `Resize(resize_size) -> CenterCrop/TenCrop -> ToTensor -> Normalize` on PIL
images to within float rounding, so features computed offline and at serving time agree.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageError",
    "PreprocessConfig",
    "load_image",
    "preprocess",
    "preprocess_batch",
]

# Same threshold as PIL's own decompression-bomb warning (~89.5 megapixels).
DEFAULT_MAX_PIXELS = 89_478_485
CROPS = ("center", "oversample")
INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
RESIZE_MODES = ("shortest", "squash")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageError(ValueError):
    """An image could not be read: missing, corrupt, unsupported or too large."""


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


def load_image(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    exif_transpose: bool = True,
) -> Image.Image:
    """Decode a file path or encoded bytes into an RGB image; transparency is composited onto white.

    Raises ImageError for missing/corrupt/unsupported data or images above `max_pixels` (checked from the header,
    before decoding). EXIF orientation is applied unless `exif_transpose=False`.
    """
    is_bytes = isinstance(source, bytes | bytearray | memoryview)
    what = "<bytes>" if is_bytes else os.fspath(source)
    try:
        fp = io.BytesIO(bytes(source)) if is_bytes else what
        with Image.open(fp) as im:
            w, h = im.size
            if w <= 0 or h <= 0:
                raise ImageError(f"{what}: empty image ({w}x{h})")
            if w * h > max_pixels:
                raise ImageError(
                    f"{what}: {w}x{h} exceeds max_pixels={max_pixels} (decompression bomb guard)"
                )
            im.load()
            if exif_transpose:
                im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise ImageError(f"{what}: cannot decode image ({type(e).__name__}: {e})") from e


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode.startswith(("I", "F")):  # 16/32-bit greyscale: rescale to 8 bit instead of clipping
        a = np.asarray(im, dtype=np.float64)
        a = a / 257.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else a
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if not has_alpha:
        return im.convert("RGB")
    rgba = im.convert("RGBA")
    out = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    out.alpha_composite(rgba)
    return out.convert("RGB")


def _resize(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    w, h = img.size
    if cfg.resize_mode == "squash":
        size = (cfg.resize_size, cfg.resize_size)
    else:  # same integer arithmetic as torchvision's _compute_resized_output_size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = cfg.resize_size, int(cfg.resize_size * long / short)
        size = (new_short, new_long) if w <= h else (new_long, new_short)
    return img.resize(size, INTERPOLATIONS[cfg.interpolation])


def _normalize(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """HWC uint8 -> CHW float32 with ToTensor + Normalize arithmetic."""
    x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    x = (x - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return x.transpose(2, 0, 1)


def _five_crops(x: np.ndarray, s: int) -> list[np.ndarray]:
    """torchvision five_crop order: top-left, top-right, bottom-left, bottom-right, centre."""
    _, h, w = x.shape
    top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
    corners = [(0, 0), (0, w - s), (h - s, 0), (h - s, w - s), (top, left)]
    return [x[:, i : i + s, j : j + s] for i, j in corners]


def preprocess(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """RGB PIL image -> float32 (3,S,S) for "center" or (10,3,S,S) for "oversample" (torchvision TenCrop order:
    five crops of the image, then five crops of its horizontal flip)."""
    if img.mode != "RGB":
        img = _to_rgb(img)  # same alpha handling as load_image
    x = _normalize(_resize(img, cfg), cfg)
    s = cfg.image_size
    if cfg.crop == "center":
        return np.ascontiguousarray(_five_crops(x, s)[4])
    return np.stack(_five_crops(x, s) + _five_crops(x[:, :, ::-1], s))


def preprocess_batch(
    images: Iterable[Image.Image] | Sequence[Image.Image], cfg: PreprocessConfig
) -> np.ndarray:
    """Stack of `preprocess` outputs: (B,3,S,S) or (B,10,3,S,S)."""
    arrays = [preprocess(im, cfg) for im in images]
    if not arrays:
        shape = (3, cfg.image_size, cfg.image_size)
        return np.zeros((0, *((10,) if cfg.crop == "oversample" else ()), *shape), np.float32)
    return np.stack(arrays)
