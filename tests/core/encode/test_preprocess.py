"""Image decoding and numpy preprocessing (torch-free), checked against the torchvision transforms."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xlsearch.encode import preprocess as P
from xlsearch.encode.decode import decode_pixels
from xlsearch.encode.preprocess import (
    CROPS,
    IMAGENET_STD,
    INTERPOLATIONS,
    RESIZE_MODES,
    DecodeLimits,
    ImageError,
    PixelLimitError,
    PreprocessConfig,
    load_image,
    preprocess,
    preprocess_batch,
)

STAMPS = Path("/usr/share/tuxpaint/stamps")
# Different sizes, aspect ratios (up to 3:1) and modes (RGBA, P + transparency, LA).
STAMP_FILES = [
    "animals/amphibians/frog-1.png",
    "animals/mammals/aquatic/whale.png",
    "clothes/hats/sombrero.png",
    "hobbies/music/brass/trumpet.png",
    "plants/flowers/flower4.png",
    "symbols/alphabets/english/filled/lowercase/g_filled.png",
]
CONFIGS = {
    "efficientnet": PreprocessConfig(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    "clip": PreprocessConfig(
        image_size=224,
        resize_size=224,
        mean=(0.48145466, 0.4578275, 0.40821073),
        std=(0.26862954, 0.26130258, 0.27577711),
    ),
    "bilinear-squash": PreprocessConfig(
        image_size=96, resize_size=113, interpolation="bilinear", resize_mode="squash"
    ),
}


@pytest.fixture(scope="module")
def stamps() -> list[Image.Image]:
    paths = [STAMPS / f for f in STAMP_FILES if (STAMPS / f).is_file()]
    if len(paths) < 3:
        pytest.skip("Tux Paint stamps not installed (/usr/share/tuxpaint/stamps)")
    return [load_image(p) for p in paths]


@pytest.mark.parametrize("crop", ["center", "oversample"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_numpy_matches_torchvision(stamps: list[Image.Image], name: str, crop: str) -> None:
    pytest.importorskip("torchvision")
    from xlsearch_training.backbones import torchvision_transform

    cfg = replace(CONFIGS[name], crop=crop)
    tf = torchvision_transform(cfg)
    for img in stamps:
        ours = preprocess(img, cfg)
        theirs = tf(img).numpy()
        assert ours.dtype == np.float32 and ours.shape == theirs.shape
        assert ours.shape == ((10,) if crop == "oversample" else ()) + (3, cfg.image_size, cfg.image_size)
        assert np.abs(ours - theirs).max() < 1e-4


def test_oversample_layout() -> None:
    # A horizontal gradient: crop 4 is the centre, crops 5..9 are the flipped image's five crops.
    img = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (256, 1))).convert("RGB")
    cfg = PreprocessConfig(image_size=224, resize_size=256, crop="oversample", mean=(0, 0, 0), std=(1, 1, 1))
    x = preprocess(img, cfg)
    center = preprocess(img, replace(cfg, crop="center"))
    np.testing.assert_array_equal(x[4], center)
    np.testing.assert_array_equal(x[5], x[1][:, :, ::-1])  # flipped top-left == mirrored top-right
    np.testing.assert_array_equal(x[9], x[4][:, :, ::-1])  # even margins: flipped centre == mirrored centre
    assert x[0, 0, 0, 0] < x[1, 0, 0, 0]


def test_alpha_composited_on_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    img = load_image(buf.getvalue())
    assert img.mode == "RGB"
    assert img.getpixel((1, 1)) == (255, 255, 255) and img.getpixel((0, 0)) == (255, 0, 0)
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((1, 0), 1)
    buf = io.BytesIO()
    pal.save(buf, format="PNG", transparency=0)
    assert load_image(buf.getvalue()).getpixel((0, 0)) == (255, 255, 255)


def test_unreadable_images_raise_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot decode"):
        load_image(b"\x89PNG\r\n\x1a\n definitely not a png")
    with pytest.raises(ImageError):
        load_image(b"")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="JPEG")
    with pytest.raises(ImageError):
        load_image(buf.getvalue()[:200])  # truncated JPEG
    with pytest.raises(ImageError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    assert isinstance(ImageError("x"), ValueError)


def test_decompression_bomb_guard() -> None:
    buf = io.BytesIO()
    Image.new("L", (300, 200)).save(buf, format="PNG")
    with pytest.raises(ImageError, match="max_pixels"):
        load_image(buf.getvalue(), max_pixels=300 * 200 - 1)
    assert load_image(buf.getvalue(), max_pixels=300 * 200).size == (300, 200)


def test_sixteen_bit_greyscale_is_rescaled() -> None:
    arr = np.full((4, 4), 65535, dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    assert load_image(buf.getvalue()).getpixel((0, 0)) == (255, 255, 255)


def test_config_roundtrip_and_validation() -> None:
    cfg = PreprocessConfig(crop="oversample", mean=[0.5, 0.5, 0.5], std=(0.5, 0.5, 0.5))
    d = json.loads(json.dumps(cfg.to_dict()))
    assert PreprocessConfig.from_dict(d) == cfg and cfg.num_crops == 10
    for bad in ({"crop": "random"}, {"interpolation": "nearest"}, {"std": (1, 0, 1)}, {"resize_size": 100}):
        with pytest.raises(ValueError):
            PreprocessConfig(**bad)
    with pytest.raises(ValueError, match="unknown"):
        PreprocessConfig.from_dict({"image_size": 224, "colour": "red"})


def test_preprocess_batch_shapes() -> None:
    imgs = [Image.new("RGB", (50, 80)), Image.new("RGB", (300, 120))]
    cfg = PreprocessConfig(image_size=32, resize_size=40)
    assert preprocess_batch(imgs, cfg).shape == (2, 3, 32, 32)
    assert preprocess_batch(imgs, replace(cfg, crop="oversample")).shape == (2, 10, 3, 32, 32)
    assert preprocess_batch([], cfg).shape == (0, 3, 32, 32)


def test_serving_modules_do_not_import_torch() -> None:
    code = (
        "import sys, xlsearch.encode.preprocess, xlsearch.encode.decode, xlsearch.encode.onnx, xlsearch.encode.features; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the bounded decode path (xlsearch.encode.decode.decode_pixels, issue 10) ---------------------------------------------
BOUNDED_SIZES = [(3, 300), (300, 3), (40, 900), (900, 40), (7, 100), (1, 32)]


def _encode(img: Image.Image, fmt: str = "PNG", orientation: int = 1, **kw) -> bytes:
    buf = io.BytesIO()
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _test_image(w: int, h: int, kind: str, seed: int = 0) -> Image.Image:
    if kind == "noise":  # the hardest case: every rounding difference shows
        a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    else:
        yy, xx = np.mgrid[0:h, 0:w]
        a = np.stack([(xx * 7 + yy * 3) % 256, (yy * 5) % 256, (xx * 11) % 256], -1).astype(np.uint8)
    return Image.fromarray(a)


def _plain(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """Today's arithmetic spelled out: resize the whole image, then take the crops."""
    target = P._target_size(*img.size, cfg)
    windows = P._windows(target, cfg)
    full = np.asarray(img.resize(target, P.INTERPOLATIONS[cfg.interpolation]))
    s = cfg.image_size
    return P._assemble({p: full[p[1] : p[1] + s, p[0] : p[0] + s] for p, _ in windows}, windows, cfg)


def _boxed(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """Every crop window through the box path, whatever its size."""
    target = P._target_size(*img.size, cfg)
    windows = P._windows(target, cfg)
    v_first = P._pillow_vertical_first(target[1] < img.height, target[0] < img.width)
    assert v_first is not None  # these sizes grow at least one side
    crops = {p: P._box_crop(img, target, p, cfg, v_first) for p, _ in windows}
    return P._assemble(crops, windows, cfg)


@pytest.mark.parametrize("size", BOUNDED_SIZES)
def test_box_path_equals_resize_then_crop(size: tuple[int, int]) -> None:
    """Resizing each crop window from its source region gives the pixels of resize-then-crop: exactly, except that
    Pillow takes the box as float32, which moves a rounding by one step (1/255) in about 1 value in 10^4."""
    for kind in ("noise", "smooth"):
        img = _test_image(*size, kind)
        for crop, mode, interpolation in itertools.product(CROPS, RESIZE_MODES, INTERPOLATIONS):
            cfg = PreprocessConfig(crop=crop, resize_mode=mode, interpolation=interpolation)
            plain, boxed = _plain(img, cfg), _boxed(img, cfg)
            assert plain.shape == boxed.shape
            steps = np.abs(plain - boxed) * np.asarray(cfg.std, np.float32)[:, None, None] * 255
            assert steps.max() <= 1.0 + 1e-3, (kind, crop, mode, interpolation)
            assert (steps > 1e-3).mean() <= 1e-3, (kind, crop, mode, interpolation)


def test_extreme_aspect_never_builds_the_resized_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """1x32 shortest-side-resizes to 256x8192 (2 M pixels); no resize output may be that large."""
    sizes: list[tuple[int, int]] = []
    resize = Image.Image.resize

    def spy(self: Image.Image, size, *args, **kwargs):  # type: ignore[no-untyped-def]
        sizes.append(tuple(size))
        return resize(self, size, *args, **kwargs)

    img = _test_image(1, 32, "smooth")
    expected = _plain(img, PreprocessConfig(crop="oversample"))
    monkeypatch.setattr(Image.Image, "resize", spy)
    got = preprocess(img, PreprocessConfig(crop="oversample"))
    assert max(w * h for w, h in sizes) <= 2 * 256 * 256
    assert np.abs(got - expected).max() <= 1.0 / 255 / min(IMAGENET_STD) + 1e-6


def test_pillow_pass_order_probe() -> None:
    """The probed order is the order Pillow's resize really uses (a wrong one changes pixels by up to ~20/255)."""
    rng = np.random.default_rng(3)
    for h_shrinks, w_shrinks in ((False, False), (True, False), (False, True)):
        v_first = P._pillow_vertical_first(h_shrinks, w_shrinks)
        assert isinstance(v_first, bool)
        w, h = 31, 57
        tw, th = (w - 9 if w_shrinks else 3 * w), (h - 9 if h_shrinks else 3 * h)
        img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
        first = img.resize((w, th) if v_first else (tw, h), Image.Resampling.BICUBIC)
        two_pass = first.resize((tw, th), Image.Resampling.BICUBIC)
        assert np.array_equal(
            np.asarray(img.resize((tw, th), Image.Resampling.BICUBIC)), np.asarray(two_pass)
        )


def _mode_images() -> dict[str, bytes]:
    rgb = _test_image(70, 45, "smooth")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray((np.arange(70 * 45).reshape(45, 70) % 256).astype(np.uint8)))
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    grey16 = Image.fromarray(np.arange(70 * 45, dtype=np.uint16).reshape(45, 70) * 20)
    return {
        "png-rgb": _encode(rgb),
        "png-rgba": _encode(rgba),
        "png-la": _encode(rgba.convert("LA")),
        "png-p-transparency": _encode(pal, transparency=3),
        "png-1bit": _encode(rgb.convert("1")),
        "png-16bit-grey": _encode(grey16),
        "jpeg-rgb": _encode(rgb, "JPEG", quality=90),
        "jpeg-grey": _encode(rgb.convert("L"), "JPEG"),
        "jpeg-cmyk": _encode(rgb.convert("CMYK"), "JPEG"),
        "gif": _encode(pal, "GIF", transparency=3),
        "webp": _encode(rgba, "WEBP", lossless=True),
        "tiff": _encode(rgb, "TIFF", compression="tiff_lzw"),
        "tiff-float": _encode(
            Image.fromarray(np.linspace(0, 300, 70 * 45, dtype=np.float32).reshape(45, 70)), "TIFF"
        ),
        "png-exif-rotated": _encode(rgb, "PNG", orientation=6),
        "jpeg-exif-transverse": _encode(rgb, "JPEG", orientation=7, quality=95),
    }


@pytest.mark.parametrize("crop", CROPS)
def test_decode_pixels_equals_load_then_preprocess(crop: str) -> None:
    """Normal images: exactly the arithmetic of preprocess(load_image(...)), every mode and format."""
    cfg = PreprocessConfig(crop=crop)
    for name, data in _mode_images().items():
        got = decode_pixels(data, cfg)
        np.testing.assert_array_equal(got, preprocess(load_image(data), cfg), err_msg=name)


def test_decode_pixels_of_stamps_equals_load_then_preprocess(stamps: list[Image.Image]) -> None:
    paths = [STAMPS / f for f in STAMP_FILES if (STAMPS / f).is_file()]
    for cfg in CONFIGS.values():
        for path in paths:
            np.testing.assert_array_equal(decode_pixels(path, cfg), preprocess(load_image(path), cfg))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_large_sources_are_reduced_close_to_the_full_resize(fmt: str) -> None:
    """Above LARGE_PIXELS the needed region is drafted/reduced first (like Pillow's reducing_gap=3): close to the
    full-resolution resize, in every EXIF orientation (measured: mean 0.1-0.4 steps of 1/255, max 2)."""
    stamp = _test_image(90, 70, "smooth").resize((2400, 1800), Image.Resampling.BICUBIC)
    assert 2400 * 1800 > P.LARGE_PIXELS
    for orientation in range(1, 9):
        data = _encode(stamp, fmt, orientation, **({"quality": 95} if fmt == "JPEG" else {}))
        for crop in CROPS:
            cfg = PreprocessConfig(crop=crop, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
            got, full = decode_pixels(data, cfg), preprocess(load_image(data), cfg)
            steps = np.abs(got - full) * 0.5 * 255
            assert steps.mean() < 0.6 and steps.max() <= 4, (orientation, crop, steps.mean(), steps.max())


def test_decode_limits_are_checked_from_the_header() -> None:
    cfg = PreprocessConfig()
    with pytest.raises(ImageError, match="aspect ratio of 1000:1; the limit is 32:1"):
        decode_pixels(_encode(Image.new("L", (1, 1000))), cfg)
    assert decode_pixels(_encode(Image.new("L", (1, 32))), cfg).shape == (3, 224, 224)
    with pytest.raises(ImageError, match="side above 1000"):
        decode_pixels(_encode(Image.new("L", (1001, 100))), cfg, DecodeLimits(max_side=1000))
    with pytest.raises(PixelLimitError, match="decompression bomb"):
        decode_pixels(_encode(Image.new("L", (300, 200))), cfg, DecodeLimits(max_pixels=300 * 200 - 1))
    with pytest.raises(ImageError, match="cannot decode") as info:
        decode_pixels(b"\x89PNG\r\n\x1a\n definitely not a png", cfg)
    assert not isinstance(info.value, PixelLimitError)


def test_only_safe_formats_are_opened() -> None:
    """PIL would hand EPS to a Ghostscript subprocess and open PSD, FITS, ... from a client's bytes: refused."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    ppm = _encode(Image.new("RGB", (8, 8)), "PPM")
    for data in (eps, ppm):
        with pytest.raises(ImageError, match="accepted formats: PNG, JPEG, GIF, WEBP, TIFF, BMP"):
            decode_pixels(data, PreprocessConfig())
    loose = DecodeLimits(formats=(*P.SAFE_FORMATS, "PPM"))
    assert decode_pixels(ppm, PreprocessConfig(), loose).shape == (3, 224, 224)
