"""The deeply supervised joint loss of the S-CNN-RNN (Liu et al. Eq. 4-5): L = L_u(s, s^) + L_r(pi, pi* | s^).

L_u is the cross entropy of the concept layer against the ground-truth concepts, summed over the k concepts (Eq. 5);
L_r the negative log-likelihood of the target sequence, summed over its time steps. Both are averaged over the
images of a batch; ``concept_weight`` scales L_u (1 in the paper; 0 removes the deep supervision).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from xlsearch_training.srnn.model import SCNNRNN


def concept_loss(logits: Tensor, concepts: Tensor) -> Tensor:
    """L_u per image, averaged over the batch."""
    return F.binary_cross_entropy_with_logits(logits, concepts, reduction="none").sum(dim=1).mean()


def sequence_loss(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """L_r per sequence (summed over its steps), averaged over the batch."""
    per_token = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=ignore_index, reduction="none"
    )
    return per_token.sum() / max(len(targets), 1)


def joint_loss(
    model: SCNNRNN,
    features: Tensor,
    inputs: Tensor,
    targets: Tensor,
    concepts: Tensor,
    user: Tensor | None = None,
    concept_weight: float = 1.0,
    ignore_index: int = -100,
) -> tuple[Tensor, dict[str, float]]:
    """(L, {"L_u", "L_r"}): the RNN loss reaches the concept layer through s^ (the LSTM's initial state)."""
    logits, step_logits = model(features, inputs, user)
    l_r = sequence_loss(step_logits, targets, ignore_index)
    if concept_weight == 0:
        return l_r, {"L_u": 0.0, "L_r": float(l_r.detach())}
    l_u = concept_loss(logits, concepts)
    return concept_weight * l_u + l_r, {"L_u": float(l_u.detach()), "L_r": float(l_r.detach())}
