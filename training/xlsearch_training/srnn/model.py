"""The S-CNN-RNN (Liu et al. Sec. 3.2, Fig. 1(d) and 2) on the frozen backbone's pooled feature.

- ``ConceptModel`` (the unary model): the image feature (times ``input_scale``) through one trainable hidden
  ReLU layer — the trainable top of the CNN — to one logit per semantic concept; ``s^ = sigmoid(logits)``. With side
  information, a user-tag MLP (one 256-unit hidden layer, Sec. 4.1) adds its logits to the image's.
- ``Decoder`` (the relational model): an LSTM whose initial state is set from the interface vector,
  ``h0 = W s^ + b`` and ``c0 = 0`` (Jin et al.'s RIA way, Fig. 1(b)); its inputs are the previous label / word and
  a softmax predicts the next (Eq. 3). One class serves tag sequences (labels + end token) and captions (words).
- ``SCNNRNN``: the two joined at the interface: s^ (``interface="concepts"``) or the hidden feature layer
  (``"features"``: the ablations NIC-F / NIC-deeply). ``init_state`` / ``step`` are the two exported graphs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ConceptModel(nn.Module):
    def __init__(
        self,
        in_dim: int,
        concepts: int,
        hidden: int = 1024,
        dropout: float = 0.5,
        input_scale: float = 1.0,
        user_dim: int = 0,
        user_hidden: int = 256,
    ) -> None:
        super().__init__()
        self.in_dim, self.concepts, self.hidden, self.user_dim = in_dim, concepts, hidden, user_dim
        self.input_scale = float(input_scale)
        self.features = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, concepts)
        self.user = (
            nn.Sequential(nn.Linear(user_dim, user_hidden), nn.ReLU(), nn.Linear(user_hidden, concepts))
            if user_dim
            else None
        )

    def forward(self, x: Tensor, user: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(hidden feature layer [B,hidden], concept logits [B,k])."""
        hidden = self.features(x * self.input_scale)
        logits = self.head(hidden)
        if self.user is not None:
            if user is None:
                user = torch.zeros(len(x), self.user_dim, dtype=x.dtype)
            logits = logits + self.user(user)
        return hidden, logits


class Decoder(nn.Module):
    def __init__(
        self,
        interface_dim: int,
        out_tokens: int,
        in_tokens: int,
        word_dim: int = 256,
        hidden: int = 512,
        dropout: float = 0.3,
        padding_idx: int | None = None,
    ) -> None:
        super().__init__()
        self.hidden = hidden
        self.init_h = nn.Linear(interface_dim, hidden)  # h0 = W s + b
        self.embed = nn.Embedding(in_tokens, word_dim, padding_idx=padding_idx)
        self.lstm = nn.LSTM(word_dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, out_tokens)
        self.drop = nn.Dropout(dropout)

    @property
    def out_tokens(self) -> int:
        return self.out.out_features

    def init_state(self, interface: Tensor) -> tuple[Tensor, Tensor]:
        h = self.init_h(interface)
        return h, torch.zeros_like(h)

    def step(self, token: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out, (h2, c2) = self.lstm(self.drop(self.embed(token)).unsqueeze(1), (h.unsqueeze(0), c.unsqueeze(0)))
        return torch.log_softmax(self.out(self.drop(out[:, 0])), dim=-1), h2[0], c2[0]

    def forward(self, interface: Tensor, inputs: Tensor) -> Tensor:
        """Teacher forcing: inputs [B,T] (start, y1 .. y_{T-1}) -> logits [B,T,V] for y1 .. yT."""
        h, c = self.init_state(interface)
        out, _ = self.lstm(self.drop(self.embed(inputs)), (h.unsqueeze(0), c.unsqueeze(0)))
        return self.out(self.drop(out))


class SCNNRNN(nn.Module):
    def __init__(self, concept: ConceptModel, decoder: Decoder, interface: str = "concepts") -> None:
        super().__init__()
        if interface not in ("concepts", "features"):
            raise ValueError(f"unknown interface {interface!r}")
        self.concept, self.decoder, self.interface = concept, decoder, interface

    # the attributes the captioner export (xlsearch_training.captioning.export) reads
    @property
    def feature_dim(self) -> int:
        return self.concept.in_dim

    @property
    def hidden(self) -> int:
        return self.decoder.hidden

    tag_dim = 0

    def encode(self, features: Tensor, user: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(interface vector, concept logits)."""
        hidden, logits = self.concept(features, user)
        return (torch.sigmoid(logits) if self.interface == "concepts" else hidden), logits

    def init_state(self, features: Tensor, tags: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(h0, c0) from the image (``tags``: the user-tag input of a tagger with side information)."""
        interface, _ = self.encode(features, tags)
        return self.decoder.init_state(interface)

    def step(self, token: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.decoder.step(token, h, c)

    def forward(self, features: Tensor, inputs: Tensor, user: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(concept logits [B,k], next-token logits [B,T,V]): what the joint loss L = L_u + L_r reads."""
        interface, logits = self.encode(features, user)
        return logits, self.decoder(interface, inputs)
