"""Losses for text -> visual-feature training. `text`, `image`: [B, D]; row i of each is a positive pair.

In-batch losses take optional `image_ids` [B]: off-diagonal pairs that share an image id (e.g. two captions of
one image in the batch) are then not used as negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _negatives(text: Tensor, image_ids: Tensor | None) -> Tensor:
    """[B, B] bool, True where (text i, image j) is a negative pair."""
    n = text.shape[0]
    neg = ~torch.eye(n, dtype=torch.bool, device=text.device)
    if image_ids is not None:
        neg &= image_ids.view(-1, 1) != image_ids.view(1, -1)
    return neg


def mse_loss(pred: Tensor, target: Tensor, normalize: bool = False) -> Tensor:
    """W2VV: squared Euclidean error summed over dims, averaged over the batch (optionally on L2-normalised vectors)."""
    if normalize:
        pred, target = F.normalize(pred, dim=1), F.normalize(target, dim=1)
    return (pred - target).pow(2).sum(1).mean()


def contrastive_loss(
    text: Tensor,
    image: Tensor,
    margin: float = 2.0,
    normalize: bool = False,
    image_ids: Tensor | None = None,
) -> Tensor:
    """Eq. 2: mean over positives of D^2 + mean over in-batch negatives of max(margin - D, 0)^2, D Euclidean.

    The two terms are averaged separately (then added) so the B^2 - B negatives do not swamp the B positives.
    With `normalize` the vectors are unit length, so D <= 2: margin=2 (the paper's value) then pushes every
    negative towards the antipode; a smaller margin (e.g. 1.0-1.4) is usually a better fit there.
    """
    if normalize:
        text, image = F.normalize(text, dim=1), F.normalize(image, dim=1)
    pos = (text - image).pow(2).sum(1).mean()
    # Squared distances by expansion; clamp before sqrt so zero distances have a finite gradient.
    d2 = text.pow(2).sum(1, keepdim=True) + image.pow(2).sum(1).unsqueeze(0) - 2.0 * text @ image.t()
    dist = d2.clamp(min=1e-12).sqrt()
    neg_mask = _negatives(text, image_ids)
    hinge = (margin - dist).clamp(min=0).pow(2)
    neg = (hinge * neg_mask).sum() / neg_mask.sum().clamp(min=1)
    return pos + neg


def infonce_loss(
    text: Tensor,
    image: Tensor,
    temperature: float = 0.05,
    symmetric: bool = True,
    image_ids: Tensor | None = None,
) -> Tensor:
    """InfoNCE on cosine similarities / temperature: text->image cross-entropy, averaged with image->text if symmetric."""
    logits = F.normalize(text, dim=1) @ F.normalize(image, dim=1).t() / temperature
    if image_ids is not None:  # hide same-image off-diagonal pairs (neither positive nor negative)
        hide = ~_negatives(text, image_ids) & ~torch.eye(len(text), dtype=torch.bool, device=text.device)
        logits = logits.masked_fill(hide, float("-inf"))
    target = torch.arange(len(text), device=text.device)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = (loss + F.cross_entropy(logits.t(), target)) / 2
    return loss


def vse_hardest_negative_loss(
    text: Tensor,
    image: Tensor,
    margin: float = 0.2,
    image_ids: Tensor | None = None,
) -> Tensor:
    """VSE++ (max of hinges): per pair, hinge on cosine with the hardest in-batch negative text->image and image->text;
    summed over both directions and averaged over the batch."""
    sim = F.normalize(text, dim=1) @ F.normalize(image, dim=1).t()
    pos = sim.diagonal()
    neg_mask = _negatives(text, image_ids)
    neg = sim.masked_fill(~neg_mask, float("-inf"))
    # A row/column without any negative gives -inf -> hinge 0.
    t2i = (margin + neg.max(dim=1).values - pos).clamp(min=0)
    i2t = (margin + neg.max(dim=0).values - pos).clamp(min=0)
    return (t2i + i2t).mean()
