"""One training stage of an S-CNN-RNN (or of a multi-scale tagger): Adam over some parameters on shuffled
mini-batches, an optional step decay of the learning rate and gradient clipping, and the weights of the epoch with
the best validation score kept (scored after every epoch, in eval mode)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm


def fit_stage(
    params: Iterable[nn.Parameter],
    model: nn.Module,
    n: int,
    loss_fn: Callable[[Tensor], Tensor],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    val_score: Callable[[], float] | None = None,
    weight_decay: float = 0.0,
    grad_clip: float = 0.0,
    lr_decay: float = 1.0,
    decay_every: int = 0,
    desc: str = "fit",
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``params`` (a subset of ``model``'s) with ``loss_fn(batch indices)``; ``model`` ends with the weights
    of the best-scoring epoch (the last one without ``val_score``). Returns the stage log."""
    params = [p for p in params if p.requires_grad]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    sched = (
        torch.optim.lr_scheduler.StepLR(opt, step_size=decay_every, gamma=lr_decay) if decay_every else None
    )
    best: tuple[float, int, dict[str, Tensor] | None] = (-math.inf, -1, None)
    history: list[dict[str, float]] = []
    for epoch in tqdm(range(1, epochs + 1), desc=desc, unit="epoch", disable=not progress, leave=False):
        model.train()
        total, count = 0.0, 0
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            batch = perm[start : start + batch_size]
            loss = loss_fn(batch)
            opt.zero_grad()
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            total, count = total + float(loss.detach()) * len(batch), count + len(batch)
        if sched is not None:
            sched.step()
        model.eval()
        entry = {"epoch": epoch, "loss": total / max(count, 1)}
        if val_score is not None:
            with torch.no_grad():
                entry["val"] = float(val_score())
            if entry["val"] > best[0]:
                best = (entry["val"], epoch, copy.deepcopy(model.state_dict()))
        history.append(entry)
    model.eval()
    if best[2] is not None:
        model.load_state_dict(best[2])
        return {"best_epoch": best[1], "best_val": best[0], "history": history}
    return {"best_epoch": epochs, "best_val": None, "history": history}


def log_summary(log: dict[str, Any]) -> dict[str, Any]:
    """A training log without the per-epoch histories of its stages."""
    return {
        k: {a: b for a, b in v.items() if a != "history"} if isinstance(v, dict) else v
        for k, v in log.items()
    }
