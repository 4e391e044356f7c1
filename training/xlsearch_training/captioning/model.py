"""Show and Tell (Vinyals et al.): the image vector through a linear image embedding W_im is the LSTM's first input,
then the words; a softmax over the vocabulary predicts the next word."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ShowAndTell(nn.Module):
    def __init__(
        self,
        feature_dim: int,
        vocab_size: int,
        tag_dim: int = 0,
        word_dim: int = 512,
        hidden: int = 512,
        dropout: float = 0.5,
        feature_scale: float = 1.0,
    ) -> None:
        super().__init__()
        # L2-normalised image vectors have tiny entries next to word embeddings; the scale is part of the graph.
        self.feature_scale = float(feature_scale)
        self.feature_dim, self.tag_dim, self.hidden = feature_dim, tag_dim, hidden
        self.w_im = nn.Linear(feature_dim + tag_dim, word_dim)
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.lstm = nn.LSTM(
            word_dim, hidden, batch_first=True
        )  # one layer; stepped one word at a time to decode
        self.out = nn.Linear(hidden, vocab_size)
        self.drop = nn.Dropout(dropout)

    @property
    def vocab_size(self) -> int:
        return self.out.out_features

    def _image_input(self, features: Tensor, tags: Tensor | None) -> Tensor:
        features = features * self.feature_scale
        return features if tags is None else torch.cat([features, tags], dim=1)

    def init_state(self, features: Tensor, tags: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """LSTM state after its first input x_-1 = W_im [image vector; bag of tags]."""
        x = self._image_input(features, tags)
        _, (h, c) = self.lstm(self.drop(self.w_im(x)).unsqueeze(1))
        return h[0], c[0]

    def step(self, token: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One word in -> log-probabilities of the next word and the new state."""
        out, (h2, c2) = self.lstm(self.drop(self.embed(token)).unsqueeze(1), (h.unsqueeze(0), c.unsqueeze(0)))
        return torch.log_softmax(self.out(self.drop(out[:, 0])), dim=-1), h2[0], c2[0]

    def forward(self, features: Tensor, tags: Tensor | None, inputs: Tensor) -> Tensor:
        """Teacher forcing: inputs [B,T] (<bos> w1 .. wn, padded) -> logits [B,T,V] for w1 .. wn <eos>."""
        x = self._image_input(features, tags)
        seq = torch.cat([self.w_im(x).unsqueeze(1), self.embed(inputs)], dim=1)
        out, _ = self.lstm(self.drop(seq))
        return self.out(self.drop(out[:, 1:]))
