"""ONNX export of the W2VV text encoders (inputs token_ids/lengths[/sentence_embedding] -> L2-normalised embedding)."""

from __future__ import annotations

import warnings
from os import PathLike
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from xlsearch_training.w2vv.model import TextEncoderConfig, W2VVTextEncoder

INPUT_NAMES = ("token_ids", "lengths", "sentence_embedding")
OUTPUT_NAME = "embedding"
OPSET = 17  # ScatterElements with reduction="add" (BoW) needs >= 16


class _Embed(nn.Module):
    def __init__(self, model: W2VVTextEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, token_ids: Tensor, lengths: Tensor, sentence_embedding: Tensor | None = None) -> Tensor:
        return self.model.embed(token_ids, lengths, sentence_embedding)


def export_text_encoder(
    model: W2VVTextEncoder,
    path: str | PathLike[str],
    cfg: TextEncoderConfig | None = None,
    opset: int = OPSET,
) -> Path:
    """Write `model` (in eval mode) to `path` with dynamic batch and sequence axes; checks it with onnx.checker."""
    cfg = cfg or model.cfg
    if cfg != model.cfg:
        raise ValueError("cfg does not match the model's config")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Example with distinct lengths; the exported graph is shape-generic (tests run other B and T).
    ids = torch.tensor([[2, 3, 4, 5, 1], [3, 2, 0, 0, 0]], dtype=torch.int64).clamp(max=cfg.vocab_size - 1)
    lengths = torch.tensor([5, 2], dtype=torch.int64)
    args: tuple[Tensor, ...] = (ids, lengths)
    names = list(INPUT_NAMES[:2])
    axes: dict[str, dict[int, str]] = {"token_ids": {0: "batch", 1: "time"}, "lengths": {0: "batch"}}
    if cfg.sentence_dim:
        args += (torch.zeros(2, cfg.sentence_dim),)
        names.append(INPUT_NAMES[2])
        axes[INPUT_NAMES[2]] = {0: "batch"}
    axes[OUTPUT_NAME] = {0: "batch"}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about GRU/batch_first are expected and harmless
            torch.onnx.export(
                _Embed(model),
                tuple(a.to(device) for a in args),
                str(path),
                input_names=names,
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
            )
    finally:
        model.train(was_training)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return path
