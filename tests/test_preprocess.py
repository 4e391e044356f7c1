"""Image decoding and numpy preprocessing (torch-free), checked against the torchvision transforms."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xlsearch.preprocess import ImageError, PreprocessConfig, load_image, preprocess, preprocess_batch

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
    from xlsearch.training.backbones import torchvision_transform

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
        "import sys, xlsearch.preprocess, xlsearch.onnx_runtime, xlsearch.features; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
