"""Pooled features of several backbone stages from the same pass that gives the pooled feature (Niu et al.
Sec. III-A at our scale: their fusion blocks read ResNet-101's five stage outputs; for the offline EfficientNet-Lite0
the stages are its last five block groups, 28x28 down to 7x7).

Each stage's output map is global-average pooled and L2-normalised on its own; the stages are concatenated in order
(``MULTISCALE_NAME`` output of a bundle's image encoder, ``multiscale_dim`` wide). Only EfficientNet-Lite0 has stage
taps; another backbone gives none (``stage_taps`` returns None and bundles are written without the output).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlsearch_training.backbones import EfficientNetLite0Backbone

__all__ = [
    "LITE0_STAGES",
    "CacheEncoder",
    "MultiScaleImageEncoder",
    "StageTaps",
    "multiscale_spec",
    "stage_taps",
]

# (name, index of the stage's last block, channels) for EfficientNet-Lite0 at 224x224: 28x28, 14x14, 14x14, 7x7, 7x7
LITE0_STAGES = (
    ("blocks.4", 4, 40),
    ("blocks.7", 7, 80),
    ("blocks.10", 10, 112),
    ("blocks.14", 14, 192),
    ("blocks.15", 15, 320),
)
POOLING = "global average pool of each stage's output map, each stage L2-normalised"


class StageTaps(nn.Module):
    """pixels -> (pooled final feature [B,F] as the backbone gives it, pooled stages [B,sum(dims)])."""

    def __init__(self, backbone: EfficientNetLite0Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.ends = {index: name for name, index, _ in LITE0_STAGES}

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        net = self.backbone.net
        x = net._swish(net._bn0(net._conv_stem(pixels)))
        taps = []
        for idx, block in enumerate(net._blocks):  # as EfficientNet.extract_features
            rate = net._global_params.drop_connect_rate
            if rate:
                rate *= float(idx) / len(net._blocks)
            x = block(x, drop_connect_rate=rate)
            if idx in self.ends:
                taps.append(F.normalize(x.mean(dim=(2, 3)), dim=1))
        x = net._swish(net._bn1(net._conv_head(x)))
        return x.mean(dim=(2, 3)), torch.cat(taps, dim=1)


def stage_taps(backbone: nn.Module) -> StageTaps | None:
    return StageTaps(backbone) if isinstance(backbone, EfficientNetLite0Backbone) else None


def multiscale_spec(output: str = "multiscale") -> dict[str, Any]:
    """The bundle manifest's ``image_encoder.multiscale`` (and a multi-scale component's ``input_feature.multiscale``)."""
    return {
        "output": output,
        "stages": [name for name, _, _ in LITE0_STAGES],
        "dims": [dim for _, _, dim in LITE0_STAGES],
        "pooling": POOLING,
    }


class CacheEncoder(nn.Module):
    """pixels -> [L2-normalised pooled feature ; pooled stages]: one vector per image for the feature cache (its
    first F columns are the ordinary cache's feature)."""

    def __init__(self, taps: StageTaps) -> None:
        super().__init__()
        self.taps = taps

    def forward(self, pixels: Tensor) -> Tensor:
        final, stages = self.taps(pixels)
        return torch.cat([F.normalize(final, dim=1), stages], dim=1)


class MultiScaleImageEncoder(nn.Module):
    """A W2VV image encoder (backbone -> head) with the stages as a third output, from one backbone pass:
    pixels -> (index vector, L2-normalised feature, pooled stages)."""

    def __init__(self, image_encoder: nn.Module, taps: StageTaps) -> None:
        super().__init__()
        self.image_encoder, self.taps = image_encoder, taps

    @property
    def head(self) -> nn.Module:
        return self.image_encoder.head

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        final, stages = self.taps(pixels)
        feature = F.normalize(final, dim=1)
        return self.image_encoder.head(feature), feature, stages


def multiscale_encoder(image_encoder: nn.Module) -> MultiScaleImageEncoder | None:
    """``image_encoder`` (with ``.backbone`` and ``.head``) with the multi-scale output, or None when its backbone
    has no stage taps."""
    taps = stage_taps(getattr(image_encoder, "backbone", None))
    return MultiScaleImageEncoder(image_encoder, taps) if taps is not None else None
