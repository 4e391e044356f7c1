"""A3VSE objectives: hardest-negative triplet (Eq. 2-3) and the domain-adversarial loss (Eq. 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def hardest_negative_triplet(
    a: Tensor, b: Tensor, margin: float, not_negative: Tensor | None = None
) -> Tensor:
    """Eq. 2 for L aligned pairs (a_i, b_i) of L2-normalised vectors (S = cosine = inner product):
    mean_i [margin - S(a_i,b_i) + max_j!=i S(a_i,b_j)]_+ + [margin - S(a_i,b_i) + max_j!=i S(a_j,b_i)]_+.
    `not_negative` [L, L] (optional, symmetric): pairs (i, j) excluded from the negatives as well, e.g. images whose
    pseudo-texts are identical (their hardest negative would otherwise be their own positive, a loss floor)."""
    scores = a @ b.T
    positive = scores.diagonal()
    mask = torch.eye(len(scores), dtype=torch.bool, device=scores.device)
    if not_negative is not None:
        mask = mask | not_negative
    off = scores.masked_fill(mask, float("-inf"))
    hardest_b = off.max(dim=1).values  # for each a_i, the most similar wrong b
    hardest_a = off.max(dim=0).values  # for each b_i, the most similar wrong a
    return (F.relu(margin - positive + hardest_b) + F.relu(margin - positive + hardest_a)).mean()


def info_nce(a: Tensor, b: Tensor, temperature: float, not_negative: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE over in-batch pairs (a_i, b_i) of L2-normalised vectors (the alternative to Eq. 2 that the
    retrieval core's e5 model uses); `not_negative` pairs are left out of the softmax denominators."""
    logits = (a @ b.T) / temperature
    if not_negative is not None:
        logits = logits.masked_fill(not_negative, float("-inf"))
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def domain_loss(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """-Eq. 4: binary cross-entropy of the discriminator with domain A labelled 1 and B labelled 0. Minimising it
    trains the discriminator; the encoders see it through gradient reversal (so they maximise it)."""
    return F.binary_cross_entropy_with_logits(
        logits_a, torch.ones_like(logits_a)
    ) + F.binary_cross_entropy_with_logits(logits_b, torch.zeros_like(logits_b))
