"""ONNX export of pretrained towers with dynamic batch **and** sequence axes, and their PyTorch parity checks.

Chinese-CLIP's own exporter (``cn_clip.deploy.pytorch_to_onnx``) fixes the batch at 1; here the image tower takes
``pixels`` [B,3,S,S] and the text tower ``token_ids`` [B,T] for any B and T (T up to the tower's position table).
The traced examples use B=2 and a padded row so nothing specialises on a batch of 1 or on unpadded input.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from xlsearch.encode.onnx import make_session
from xlsearch_training.export import FEATURE_NAME, OUTPUT_NAME, compare_with_onnx, export_image_encoder

__all__ = ["export_image_tower", "export_text_tower", "image_parity", "text_parity"]

TOKEN_INPUT = "token_ids"
OPSET = 17


def export_image_tower(module: nn.Module, path: Path, image_size: int) -> Path:
    """pixels -> (embedding, feature), dynamic batch (xlsearch_training.export.export_image_encoder)."""
    return export_image_encoder(
        module.eval(), path, image_size, opset=OPSET, output_names=(OUTPUT_NAME, FEATURE_NAME)
    )


def export_text_tower(module: nn.Module, path: Path, pad_id: int, example_ids: list[int]) -> Path:
    """token_ids [B,T] -> embedding [B,D] with dynamic B and T; ``example_ids`` are real token ids of the tower's
    vocabulary (a padded second row is made from them)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    row = list(example_ids)
    ids = torch.tensor([row, row[:2] + [pad_id] * (len(row) - 2)], dtype=torch.int64)
    was_training = module.training
    module.eval()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notices about shape-dependent Python branches
            torch.onnx.export(
                module,
                (ids,),
                str(path),
                input_names=[TOKEN_INPUT],
                output_names=[OUTPUT_NAME],
                dynamic_axes={TOKEN_INPUT: {0: "batch", 1: "sequence"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        module.train(was_training)
    onnx.checker.check_model(str(path), full_check=True)
    return path


def text_parity(module: nn.Module, path: Path, token_ids: np.ndarray) -> float:
    """Max |PyTorch - ONNX Runtime| of the text tower on ``token_ids`` [B,T]."""
    module.eval()
    with torch.no_grad():
        expected = module(torch.from_numpy(token_ids.astype(np.int64))).numpy()
    (got,) = make_session(path, 1).run([OUTPUT_NAME], {TOKEN_INPUT: token_ids.astype(np.int64)})
    if got.shape != expected.shape:
        raise AssertionError(f"ONNX output shape {got.shape} != PyTorch {expected.shape}")
    return float(np.abs(got - expected).max())


def image_parity(module: nn.Module, path: Path, pixels: np.ndarray) -> float:
    """Max |PyTorch - ONNX Runtime| over both image outputs on ``pixels`` [B,3,S,S]."""
    return compare_with_onnx(module, path, torch.from_numpy(pixels.astype(np.float32)), intra_op_threads=1)
