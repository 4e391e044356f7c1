"""A trainable head on top of the frozen image backbone: centre, optionally project, L2-normalise.

With `proj_dim == 0` the index space is the backbone's own visual feature space (the paper's W2VV setting), only
centred on the training images (the pooled features are all-positive, so uncentred cosines crowd near 1). With
`proj_dim > 0` a linear projection is learned jointly with the Chinese encoder (a VSE-style joint space); the English
encoder is then trained into that same, frozen space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ImageHead(nn.Module):
    def __init__(self, in_dim: int, proj_dim: int = 0, center: Tensor | None = None) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.register_buffer("center", center.clone().float() if center is not None else torch.zeros(in_dim))
        self.proj = nn.Linear(in_dim, proj_dim) if proj_dim else None

    @property
    def dim(self) -> int:
        return self.proj.out_features if self.proj is not None else self.in_dim

    def forward(self, features: Tensor) -> Tensor:
        x = F.normalize(features, dim=1) - self.center
        if self.proj is not None:
            x = self.proj(x)
        return F.normalize(x, dim=1)


class ImageEncoder(nn.Module):
    """backbone -> head: what `image_encoder.onnx` computes, pixels -> (index vector, L2-normalised backbone feature).

    The feature is what the feature cache holds and what the tagger and captioner components read, so one pass of
    the backbone serves search, tagging and captioning."""

    def __init__(self, backbone: nn.Module, head: ImageHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        feature = F.normalize(self.backbone(pixels), dim=1)
        return self.head(feature), feature
