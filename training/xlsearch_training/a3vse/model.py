"""A3VSE encoders (Huang et al., MM 2019, Sec. 3.2-3.3) and the domain discriminators.

G^v = E^v . F^v: fixed regions [B,N,C] -> trainable FC to H -> K-head context-aware attention (Eq. 1).
G^t = E^t . F^t: word embeddings -> LSTM (H) -> the same kind of attention with its own parameters.
Instance embeddings are the K attended vectors concatenated (K*H) and L2-normalised, so cosine = inner product.

Eq. 1, per head k: alpha_ik = tanh(P_k c)^T tanh(Q_k v_i) with c the mean of the valid entries, W_k = softmax_i
(lambda * alpha_k) over valid entries only, output W_k V^T. The paper does not give lambda; alpha sums K' products
in [-1, 1], so the default is lambda = 1/sqrt(K') (scaled dot-product attention).

The LSTM is unidirectional, so states at valid positions do not depend on right padding; padded steps are excluded
from the context mean and from the softmax. Everything exports to plain ONNX.

Optional sentence branch (the issue's "initialise the text side from the pretrained sentence branch"): the frozen
e5 sentence embedding of the text [B,E] is projected by a trainable linear map to K*H and either added to the
attended LSTM output before the L2 normalisation ("fused") or used alone ("sentence_only").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlsearch.encode.text import PAD_ID
from xlsearch_training.config import Config

_NEG = -1e9
TEXT_MODES = ("lstm", "fused", "sentence_only")
# The six discriminators of Eq. 5-7: (name, first domain, second domain, group).
DOMAIN_PAIRS: tuple[tuple[str, str, str, str], ...] = (
    ("v_vu", "v", "vu", "intra"),
    ("t_s", "t", "s", "intra"),
    ("v_t", "v", "t", "cross"),
    ("vu_s", "vu", "s", "cross"),
    ("v_s", "v", "s", "trans"),
    ("vu_t", "vu", "t", "trans"),
)


@dataclass
class A3VSEModelConfig(Config):
    config_name: ClassVar[str] = "A3VSE model"

    region_dim: int = 1280
    hidden: int = 512  # H
    heads: int = 3  # K
    context_dim: int = 512  # K'
    temperature: float = 0.0  # lambda; 0 -> 1/sqrt(context_dim)
    word_dim: int = 300
    disc_hidden: int = 256
    sentence_dim: int = 0  # E of the frozen sentence embedding; 0 = no sentence branch
    text_mode: str = "lstm"  # "lstm" | "fused" (LSTM + sentence branch) | "sentence_only"

    def __post_init__(self) -> None:
        if self.text_mode not in TEXT_MODES:
            raise ValueError(f"text_mode must be one of {TEXT_MODES}, got {self.text_mode!r}")
        if self.text_mode != "lstm" and self.sentence_dim <= 0:
            raise ValueError(f"text_mode {self.text_mode!r} needs sentence_dim > 0")

    @property
    def uses_tokens(self) -> bool:
        return self.text_mode != "sentence_only"

    @property
    def uses_sentence(self) -> bool:
        return self.text_mode != "lstm"

    @property
    def embed_dim(self) -> int:
        return self.hidden * self.heads

    @property
    def lam(self) -> float:
        return self.temperature or 1.0 / math.sqrt(self.context_dim)


def valid_mask(token_ids: Tensor, lengths: Tensor) -> Tensor:
    """[B, T] bool, True at positions < length (lengths below 1 count as 1); traceable."""
    positions = torch.ones_like(token_ids).cumsum(1) - 1
    return positions < lengths.clamp(min=1).unsqueeze(1)


class AttentiveEncoder(nn.Module):
    """K-head context-aware attention (Eq. 1): [B,N,H] (+ mask [B,N]) -> ([B,K*H], weights [B,K,N])."""

    def __init__(self, hidden: int, heads: int, context_dim: int, lam: float) -> None:
        super().__init__()
        self.heads, self.context_dim, self.lam = heads, context_dim, lam
        self.P = nn.Linear(hidden, heads * context_dim)
        self.Q = nn.Linear(hidden, heads * context_dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, n, _ = x.shape
        if mask is None:
            context = x.mean(1)
        else:
            m = mask.unsqueeze(2).to(x.dtype)
            context = (x * m).sum(1) / m.sum(1).clamp(min=1.0)
        p = torch.tanh(self.P(context)).view(b, self.heads, 1, self.context_dim)
        q = torch.tanh(self.Q(x)).view(b, n, self.heads, self.context_dim).transpose(1, 2)  # [B,K,N,K']
        alpha = (q * p).sum(-1) * self.lam  # [B,K,N]
        if mask is not None:
            alpha = alpha.masked_fill(~mask.unsqueeze(1), _NEG)
        weights = torch.softmax(alpha, dim=-1)
        out = torch.einsum("bkn,bnh->bkh", weights, x)
        return out.reshape(b, -1), weights


class VisualEncoder(nn.Module):
    """G^v: regions [B,N,C] -> L2-normalised [B,K*H]."""

    def __init__(self, cfg: A3VSEModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.region_dim, cfg.hidden)
        self.attention = AttentiveEncoder(cfg.hidden, cfg.heads, cfg.context_dim, cfg.lam)

    def forward(self, regions: Tensor) -> Tensor:
        out, _ = self.attention(self.fc(regions))
        return F.normalize(out, dim=-1)


class TextEncoder(nn.Module):
    """G^t: token ids [B,T] + lengths [B] (+ sentence embedding [B,E]) -> L2-normalised [B,K*H]."""

    def __init__(self, cfg: A3VSEModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.mode = cfg.text_mode
        self.sentence_dim = cfg.sentence_dim if cfg.uses_sentence else 0
        if cfg.uses_tokens:
            self.embedding = nn.Embedding(vocab_size, cfg.word_dim, padding_idx=PAD_ID)
            self.lstm = nn.LSTM(cfg.word_dim, cfg.hidden, batch_first=True)
            self.attention = AttentiveEncoder(cfg.hidden, cfg.heads, cfg.context_dim, cfg.lam)
        if cfg.uses_sentence:
            self.sentence_proj = nn.Linear(cfg.sentence_dim, cfg.embed_dim)

    def states(self, token_ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        mask = valid_mask(token_ids, lengths)
        words = self.embedding(token_ids) * mask.unsqueeze(2).float()
        out, _ = self.lstm(words)
        return out, mask

    def forward(self, token_ids: Tensor, lengths: Tensor, sentence: Tensor | None = None) -> Tensor:
        out = None
        if self.mode != "sentence_only":
            states, mask = self.states(token_ids, lengths)
            out, _ = self.attention(states, mask)
        if self.sentence_dim:
            if sentence is None:
                raise ValueError(f"text_mode {self.mode!r} needs the sentence embedding")
            projected = self.sentence_proj(sentence)
            out = projected if out is None else out + projected
        return F.normalize(out, dim=-1)


class GradReverse(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by -coeff (Ganin & Lempitsky's GRL)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, coeff: float) -> Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.coeff * grad, None


def grad_reverse(x: Tensor, coeff: float = 1.0) -> Tensor:
    return GradReverse.apply(x, coeff)


def grl_coefficient(progress: float, eta: float = 10.0) -> float:
    """gamma = 2 / (1 + exp(-eta p)) - 1, p in [0, 1] the training progress (Sec. 4.3)."""
    return 2.0 / (1.0 + math.exp(-eta * progress)) - 1.0


class DomainDiscriminator(nn.Module):
    """D_theta: embedding -> logit of "first domain"."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


class A3VSE(nn.Module):
    """Visual encoder, one text encoder (one language) and the six domain discriminators."""

    def __init__(self, cfg: A3VSEModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual = VisualEncoder(cfg)
        self.text = TextEncoder(cfg, vocab_size)
        self.discriminators = nn.ModuleDict(
            {name: DomainDiscriminator(cfg.embed_dim, cfg.disc_hidden) for name, *_ in DOMAIN_PAIRS}
        )

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.visual.parameters()) + list(self.text.parameters())


class A3VSEImageEncoder(nn.Module):
    """What the bundle's image_encoder.onnx computes: pixels -> (embedding, feature)."""

    def __init__(self, extractor: nn.Module, visual: VisualEncoder) -> None:
        super().__init__()
        self.extractor = extractor
        self.visual = visual

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        regions = self.extractor(pixels)
        return self.visual(regions), F.normalize(regions.mean(1), dim=-1)
