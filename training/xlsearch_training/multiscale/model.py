"""Niu et al.'s model (Fig. 2-4) on pooled backbone stages.

- ``Fusion`` (Eq. 2-3): M*_1 = M_1, M*_l = M_l + F_l(M*_{l-1}) with F_l = phi_2(phi_1(.)), each phi a linear map +
  batch norm + ReLU. Their phi_1 is a 3x3 convolution with stride 2 (to the next stage's size) and phi_2 a 1x1
  convolution (to its channels); on globally pooled stages the spatial part is gone, so phi_1 is c_{l-1} -> c_{l-1}
  and phi_2 c_{l-1} -> c_l. The last BN of every block starts at zero, so the fused vector starts as the final
  feature itself (the MS-CNN starts as the fine-tuned CNN, Algorithm 1 step 2).
- ``VisualModel``: [final feature ; stages] -> (fusion ->) the top (linear + ReLU + dropout) -> f_v.
- ``TextualModel`` (Sec. III-B): user tags (multi-hot) -> two hidden ReLU layers -> f_t (f_v's size).
- ``MultiScaleTagger``: the exported graph: feature [B,F(+stages)] (+ user_tags) -> zh_probs (sigmoid of a linear
  classifier on [f_v ; f_t]) and count (label quantity: an MLP 512-256 on the same vector), the tagger format
  ``xlsearch.bundle.tagger.Tagger`` serves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from xlsearch_training.tagging.models import CountRegressor


def _phi(a: int, b: int, zero: bool = False) -> nn.Sequential:
    bn = nn.BatchNorm1d(b)
    if zero:
        nn.init.zeros_(bn.weight)
    return nn.Sequential(nn.Linear(a, b), bn, nn.ReLU())


class Fusion(nn.Module):
    def __init__(self, dims: Sequence[int]) -> None:
        """``dims``: channels of each level, lowest first; the last is the final feature's."""
        super().__init__()
        self.dims = list(dims)
        self.blocks = nn.ModuleList(
            nn.Sequential(_phi(a, a), _phi(a, b, zero=True))
            for a, b in zip(self.dims[:-1], self.dims[1:], strict=True)
        )

    def forward(self, levels: list[Tensor]) -> Tensor:
        fused = levels[0]
        for block, level in zip(self.blocks, levels[1:], strict=True):
            fused = level + block(fused)
        return fused


class VisualModel(nn.Module):
    """Input: the component vector [final feature (dim) ; stages (stage_dims)]; each part times sqrt(its width)."""

    def __init__(
        self, dim: int, stage_dims: Sequence[int], hidden: int, dropout: float, multi_scale: bool
    ) -> None:
        super().__init__()
        self.dim, self.stage_dims, self.multi_scale = dim, list(stage_dims), multi_scale
        self.fusion = Fusion([*self.stage_dims, dim]) if multi_scale else None
        self.top = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        edges = [0, dim]
        for d in self.stage_dims:
            edges.append(edges[-1] + d)
        self._parts = list(zip(edges[:-1], edges[1:], strict=True))

    @property
    def in_dim(self) -> int:
        return self.dim + (sum(self.stage_dims) if self.multi_scale else 0)

    def levels(self, x: Tensor) -> list[Tensor]:
        parts = [x[:, a:b] * math.sqrt(b - a) for a, b in self._parts]
        return [*parts[1:], parts[0]]  # stages (lowest first), then the final feature

    def forward(self, x: Tensor) -> Tensor:
        if self.fusion is None:
            return self.top(x[:, : self.dim] * math.sqrt(self.dim))
        return self.top(self.fusion(self.levels(x)))


class TextualModel(nn.Module):
    def __init__(self, tags: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(tags, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
        )

    def forward(self, user: Tensor) -> Tensor:
        return self.net(user)


class MultiScaleTagger(nn.Module):
    """feature [B,in_dim] (+ user_tags [B,C]) -> (zh_probs [B,C], count [B])."""

    def __init__(
        self,
        visual: VisualModel,
        classifier: nn.Linear,
        count: CountRegressor,
        textual: TextualModel | None = None,
    ) -> None:
        super().__init__()
        self.visual, self.textual, self.classifier, self.count = visual, textual, classifier, count
        self.user_tags = textual is not None

    def joint(self, feature: Tensor, user: Tensor | None = None) -> Tensor:
        fv = self.visual(feature)
        if self.textual is None:
            return fv
        if user is None:
            user = torch.zeros(len(feature), self.textual.net[0].in_features)
        return torch.cat([fv, self.textual(user)], dim=1)

    def forward(self, feature: Tensor, user_tags: Tensor | None = None) -> tuple[Tensor, Tensor]:
        f = self.joint(feature, user_tags)
        return torch.sigmoid(self.classifier(f)), self.count(f)
