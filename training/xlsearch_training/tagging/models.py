"""Tagging networks (COCO-CN Sec. IV-B, Fig. 5) and the label-quantity regressor (Niu et al.).

Every network reads the L2-normalised backbone vector. It is multiplied by ``input_scale`` (sqrt of its dimension
by default) so its entries are of the same order as the English probabilities and user-tag bits it is concatenated
with in the cascade; the scale is part of the exported graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class TagMLP(nn.Module):
    """One hidden ReLU layer with dropout; returns logits (sigmoid + BCE outside)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 1024, dropout: float = 0.5) -> None:
        super().__init__()
        self.net = mlp(in_dim, [hidden], out_dim, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MultiTaskMLP(nn.Module):
    """One shared hidden layer, an English and a Chinese output layer; returns (en logits, zh logits)."""

    def __init__(
        self, in_dim: int, en_dim: int, zh_dim: int, hidden: int = 1024, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.shared = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.en = nn.Linear(hidden, en_dim)
        self.zh = nn.Linear(hidden, zh_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.shared(x)
        return self.en(h), self.zh(h)


class CountRegressor(nn.Module):
    """Label quantity prediction: an MLP (Niu et al.: hidden 512 and 256, dropout 0.5) with one linear output."""

    def __init__(self, in_dim: int, hidden: Sequence[int] = (512, 256), dropout: float = 0.5) -> None:
        super().__init__()
        self.net = mlp(in_dim, hidden, 1, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


class ServedTagger(nn.Module):
    """The exported graph: feature [B,F] (+ user_tags [B,Cz]) -> zh_probs [B,Cz], (en_probs [B,Ce],) count [B].

    ``kind`` is "mlp" (zh-only MLP), "multitask" or "cascade"; the English probabilities are an output for the last
    two (the server names each Chinese tag in English from them)."""

    def __init__(
        self,
        kind: str,
        input_scale: float,
        zh: nn.Module,
        count: nn.Module,
        en: nn.Module | None = None,
        user_tags: bool = False,
    ) -> None:
        super().__init__()
        if kind not in ("mlp", "multitask", "cascade"):
            raise ValueError(f"unknown tagger model {kind!r}")
        if kind == "cascade" and en is None:
            raise ValueError("a cascade needs its English first stage")
        self.kind, self.input_scale, self.user_tags = kind, float(input_scale), user_tags
        self.zh, self.en, self.count = zh, en, count

    def zh_input(self, x: Tensor, en_probs: Tensor | None, user: Tensor | None) -> Tensor:
        parts = [x]
        if self.kind == "cascade":
            assert en_probs is not None
            parts.append(en_probs)
        if self.user_tags:
            assert user is not None
            parts.append(user)
        return torch.cat(parts, dim=1) if len(parts) > 1 else x

    def logits(self, feature: Tensor, user: Tensor | None = None) -> tuple[Tensor | None, Tensor]:
        """(English logits or None, Chinese logits)."""
        x = feature * self.input_scale
        if self.kind == "multitask":
            en_logits, zh_logits = self.zh(self.zh_input(x, None, user))
            return en_logits, zh_logits
        en_logits = self.en(x) if self.en is not None else None
        en_probs = torch.sigmoid(en_logits) if en_logits is not None else None
        return en_logits, self.zh(self.zh_input(x, en_probs, user))

    def forward(self, feature: Tensor, user_tags: Tensor | None = None) -> tuple[Tensor, ...]:
        en_logits, zh_logits = self.logits(feature, user_tags)
        count = self.count(feature * self.input_scale)
        if en_logits is None:
            return torch.sigmoid(zh_logits), count
        return torch.sigmoid(zh_logits), torch.sigmoid(en_logits), count
