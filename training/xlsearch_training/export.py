"""ONNX export of image encoders: `pixels` float32 [B,3,S,S] -> `embedding` float32 [B,D], dynamic batch.

A bundle's image encoder has a second output, `feature` (the L2-normalised pooled backbone vector), which the
tagger and captioner components read, and, for a backbone with stage taps, a third, `multiscale` (pooled backbone
stages, `xlsearch_training.multiscale.backbone`); modules returning a tuple are exported with one name per output.
`runtime_versions` is what every bundle writer records about the software that wrote the bundle."""

from __future__ import annotations

import os
import platform
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import xlsearch
from xlsearch.encode.onnx import make_session

__all__ = [
    "FEATURE_NAME",
    "INPUT_NAME",
    "MULTISCALE_NAME",
    "OUTPUT_NAME",
    "ImageEncoderHead",
    "compare_with_onnx",
    "export_image_encoder",
    "runtime_versions",
]

INPUT_NAME = "pixels"
OUTPUT_NAME = "embedding"
FEATURE_NAME = "feature"
MULTISCALE_NAME = "multiscale"


class ImageEncoderHead(nn.Module):
    """backbone features -> (minus `center`) -> (L2-normalised); what the bundle's image_encoder.onnx computes."""

    center: Tensor | None

    def __init__(self, backbone: nn.Module, center: Tensor | None = None, normalize: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("center", None if center is None else center.detach().float().reshape(1, -1))
        self.normalize = normalize

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.backbone(pixels)
        if self.center is not None:
            x = x - self.center
        return F.normalize(x, dim=-1) if self.normalize else x


def export_image_encoder(
    module: nn.Module,
    path: str | os.PathLike[str],
    image_size: int,
    opset: int = 17,
    dynamo: bool = False,
    output_names: Sequence[str] = (OUTPUT_NAME,),
) -> Path:
    """Export `module` (pixels -> vector, or a tuple of vectors named by `output_names`) to ONNX with a dynamic batch
    axis and check it with onnx.checker.

    Uses the TorchScript exporter by default (fast, quiet, verified on both backbones; deprecated in torch >= 2.9);
    `dynamo=True` uses the torch.export-based exporter instead (opset >= 18, single file). The module is exported in
    eval mode; its previous train/eval mode is restored."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    fastpath = torch.backends.mha.get_fastpath_enabled()
    module.eval()
    # nn.MultiheadAttention's inference fast path (aten::_native_multi_head_attention) has no ONNX symbolic.
    torch.backends.mha.set_fastpath_enabled(False)
    # batch 2 so the tracer cannot specialise anything on a batch of 1
    dummy = torch.zeros(2, 3, image_size, image_size)
    names = {"input_names": [INPUT_NAME], "output_names": list(output_names)}
    try:
        with warnings.catch_warnings():  # known-harmless exporter notices
            warnings.filterwarnings(
                "ignore", message="You are using the legacy TorchScript", category=DeprecationWarning
            )
            warnings.filterwarnings(
                "ignore", message="The feature will be removed", category=DeprecationWarning
            )
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
            # shape assertions inside nn.MultiheadAttention; the batch-1/3 parity check covers real tracing issues
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module="torch.nn.functional")
            if dynamo:
                torch.onnx.export(
                    module,
                    (dummy,),
                    str(path),
                    **names,
                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                    opset_version=max(opset, 18),
                    external_data=False,
                    verbose=False,
                    dynamo=True,
                )
            else:
                torch.onnx.export(
                    module,
                    (dummy,),
                    str(path),
                    **names,
                    dynamic_axes={INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in output_names}},
                    opset_version=opset,
                    do_constant_folding=True,
                    dynamo=False,
                )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        module.train(was_training)
    onnx.checker.check_model(str(path), full_check=True)
    return path


def compare_with_onnx(
    module: nn.Module, path: str | os.PathLike[str], pixels: Tensor, intra_op_threads: int | None = None
) -> float:
    """Max absolute difference between `module(pixels)` in PyTorch and the exported ONNX model on the same input
    (over every output when the module returns a tuple)."""
    module.eval()
    with torch.no_grad():
        out = module(pixels)
    expected = [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]
    session = make_session(path, intra_op_threads)
    got = session.run(None, {INPUT_NAME: pixels.numpy().astype(np.float32)})
    if len(got) != len(expected):
        raise AssertionError(f"ONNX has {len(got)} outputs, PyTorch {len(expected)}")
    worst = 0.0
    for g, e in zip(got, expected, strict=True):
        if g.shape != e.shape:
            raise AssertionError(f"ONNX output shape {g.shape} != PyTorch {e.shape}")
        worst = max(worst, float(np.abs(g - e).max()))
    return worst


def runtime_versions() -> dict[str, str]:
    """What a bundle records about the software that wrote it."""
    return {
        "xlsearch": xlsearch.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }
