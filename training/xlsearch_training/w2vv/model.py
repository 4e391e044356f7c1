"""W2VV and Enhanced W2VV text encoders (COCO-CN paper, Sec. V-D, Fig. 6).

A sentence is vectorised in parallel by up to four branches, concatenated and mapped by an MLP to the visual
feature space:
  * BoW: token count vector over the vocabulary (pad excluded, unk included), L2-normalised; computed in the
    graph from the token ids, so the ONNX model only needs ids.
  * w2v: mean of the (trained; no pretrained word2vec offline) word embeddings over the valid positions.
  * GRU: unidirectional GRU over the word embeddings. W2VV uses the hidden state at position length-1;
    Enhanced W2VV (attention=True) uses sum_i alpha_i h_i with alpha = softmax(w^T h_i + b) over valid steps (Eq. 1).
  * sentence: optional pretrained multilingual sentence vector (e5, [B, sentence_dim]) passed in as an input.

Padding: the GRU runs over the right-padded batch without packing. Being unidirectional, its state at step t
only depends on steps <= t, so states at valid positions are identical with or without padding; padded steps
are excluded by gathering at length-1 (W2VV) or by the attention mask. This exports to a plain ONNX GRU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlsearch.encode.text import PAD_ID
from xlsearch_training.config import Config

_NEG = -1e9  # attention logit for padded steps


@dataclass
class TextEncoderConfig(Config):
    config_name: ClassVar[str] = "text encoder"

    vocab_size: int
    out_dim: int  # visual feature dimension
    word_dim: int = 300
    gru_dim: int = 512
    attention: bool = False  # False: W2VV (last GRU state); True: Enhanced W2VV (soft attention, Eq. 1)
    use_bow: bool = True
    use_mean_embedding: bool = True  # the paper's "w2v" branch
    use_gru: bool = True
    sentence_dim: int = 0  # 0: no pretrained sentence branch
    mlp_hidden: list[int] = field(default_factory=lambda: [2048])
    dropout: float = 0.2
    activation: str = "relu"  # "relu" or "tanh", between MLP layers

    def __post_init__(self) -> None:
        if self.vocab_size < 2 or self.out_dim < 1:
            raise ValueError("vocab_size must be >= 2 and out_dim >= 1")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}")
        if self.feature_dim == 0:
            raise ValueError("at least one branch (bow, mean embedding, gru, sentence) must be enabled")

    @property
    def feature_dim(self) -> int:
        """Size of the concatenated branch vector fed to the MLP."""
        return (
            self.vocab_size * self.use_bow
            + self.word_dim * self.use_mean_embedding
            + self.gru_dim * self.use_gru
            + self.sentence_dim
        )


_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


def _valid_mask(token_ids: Tensor, lengths: Tensor) -> Tensor:
    """[B, T] bool, True at positions < length (lengths below 1 count as 1). Pure tensor ops: ONNX-traceable."""
    positions = torch.ones_like(token_ids).cumsum(1) - 1
    return positions < lengths.clamp(min=1).unsqueeze(1)


class W2VVTextEncoder(nn.Module):
    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        needs_words = cfg.use_mean_embedding or cfg.use_gru
        self.embedding = (
            nn.Embedding(cfg.vocab_size, cfg.word_dim, padding_idx=PAD_ID) if needs_words else None
        )
        self.gru = nn.GRU(cfg.word_dim, cfg.gru_dim, batch_first=True) if cfg.use_gru else None
        self.attention = nn.Linear(cfg.gru_dim, 1) if cfg.use_gru and cfg.attention else None
        layers: list[nn.Module] = [nn.Dropout(cfg.dropout)]
        dim = cfg.feature_dim
        for hidden in cfg.mlp_hidden:
            layers += [nn.Linear(dim, hidden), _ACTIVATIONS[cfg.activation](), nn.Dropout(cfg.dropout)]
            dim = hidden
        layers.append(nn.Linear(dim, cfg.out_dim))
        self.mlp = nn.Sequential(*layers)

    def _bow(self, token_ids: Tensor, mask: Tensor) -> Tensor:
        counts = torch.zeros(
            token_ids.shape[0], self.cfg.vocab_size, dtype=torch.float32, device=token_ids.device
        )
        counts = counts.scatter_add(1, token_ids, (mask & (token_ids != PAD_ID)).float())
        return F.normalize(counts, dim=1)

    def _gru(self, words: Tensor, mask: Tensor) -> Tensor:
        assert self.gru is not None
        states, _ = self.gru(words)  # [B, T, H]
        if self.attention is None:
            last = (mask.long().sum(1) - 1).clamp(min=0)  # index length-1 (length capped at T)
            return states.gather(1, last.view(-1, 1, 1).expand(-1, 1, states.shape[2])).squeeze(1)
        logits = self.attention(states).squeeze(2).masked_fill(~mask, _NEG)
        alpha = torch.softmax(logits, dim=1)
        return torch.bmm(alpha.unsqueeze(1), states).squeeze(1)

    def features(
        self, token_ids: Tensor, lengths: Tensor, sentence_embedding: Tensor | None = None
    ) -> Tensor:
        """Concatenated branch vector [B, feature_dim] (before the MLP)."""
        cfg = self.cfg
        mask = _valid_mask(token_ids, lengths)
        parts: list[Tensor] = []
        if cfg.use_bow:
            parts.append(self._bow(token_ids, mask))
        if self.embedding is not None:
            words = self.embedding(token_ids) * mask.unsqueeze(2).float()
            if cfg.use_mean_embedding:
                parts.append(words.sum(1) / mask.float().sum(1, keepdim=True))
            if cfg.use_gru:
                parts.append(self._gru(words, mask))
        if cfg.sentence_dim:
            if sentence_embedding is None:
                raise ValueError("this encoder has a sentence branch: sentence_embedding is required")
            parts.append(sentence_embedding.float())
        return torch.cat(parts, dim=1)

    def forward(self, token_ids: Tensor, lengths: Tensor, sentence_embedding: Tensor | None = None) -> Tensor:
        """Raw predicted visual feature [B, out_dim]."""
        return self.mlp(self.features(token_ids, lengths, sentence_embedding))

    def embed(self, token_ids: Tensor, lengths: Tensor, sentence_embedding: Tensor | None = None) -> Tensor:
        """L2-normalised forward (what the ONNX export outputs)."""
        return F.normalize(self.forward(token_ids, lengths, sentence_embedding), dim=1)


def build_text_encoder(cfg: TextEncoderConfig) -> W2VVTextEncoder:
    return W2VVTextEncoder(cfg)
