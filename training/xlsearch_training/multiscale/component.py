"""ONNX export of a trained multi-scale tagger as a tagger component of the ordinary format (``tagger.onnx``:
feature [B,F(+stages)] (+ user_tags [B,C]) -> zh_probs [B,C], count [B]; ``xlsearch.bundle.tagger.Tagger`` serves
it). A multi-scale model's ``input_feature`` names the stages it reads, so it attaches only to a bundle whose
image encoder has the same multi-scale output; the single-scale model reads the feature alone."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from xlsearch.bundle.components import write_component
from xlsearch.bundle.tagger import COUNT_OUTPUT, FEATURE_INPUT, USER_INPUT, ZH_OUTPUT
from xlsearch.encode.onnx import make_session
from xlsearch_training.multiscale.train import TrainedMultiScale
from xlsearch_training.srnn.fit import log_summary

MODEL_FILE, ZH_VOCAB_FILE, EN_VOCAB_FILE = "tagger.onnx", "tags_zh.json", "tags_en.json"


def component_input_feature(input_feature: dict[str, Any], multi_scale: bool) -> dict[str, Any]:
    """The spec's input_feature: with the stages for a multi-scale model, without them for the single-scale one."""
    return {k: v for k, v in input_feature.items() if multi_scale or k != "multiscale"}


@torch.no_grad()
def write_multiscale_tagger(
    trained: TrainedMultiScale,
    out_dir: Path,
    input_feature: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    parity_x: np.ndarray | None = None,
) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model = trained.model.eval()
    width, n_labels = model.visual.in_dim, len(trained.zh_vocab)
    inputs = [FEATURE_INPUT, *([USER_INPUT] if model.user_tags else [])]
    outputs = [ZH_OUTPUT, COUNT_OUTPUT]
    dummy = (torch.zeros(2, width),) + ((torch.zeros(2, n_labels),) if model.user_tags else ())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model, dummy, str(out_dir / MODEL_FILE), input_names=inputs, output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in inputs + outputs}, opset_version=17,
            do_constant_folding=True, dynamo=False,
        )  # fmt: skip
    onnx.checker.check_model(str(out_dir / MODEL_FILE), full_check=True)
    trained.zh_vocab.save(out_dir / ZH_VOCAB_FILE)
    trained.en_vocab.save(out_dir / EN_VOCAB_FILE)
    x = parity_x[:, :width] if parity_x is not None else np.random.default_rng(0).normal(size=(3, width))
    x = np.ascontiguousarray(x, dtype=np.float32)
    feeds = {FEATURE_INPUT: x}
    args = [torch.from_numpy(x)]
    if model.user_tags:
        feeds[USER_INPUT] = (np.random.default_rng(1).random((len(x), n_labels)) < 0.05).astype(np.float32)
        args.append(torch.from_numpy(feeds[USER_INPUT]))
    expected = [t.numpy() for t in model(*args)]
    got = make_session(out_dir / MODEL_FILE, intra_op_threads=1).run(outputs, feeds)
    parity = max(float(np.abs(a - b).max()) for a, b in zip(expected, got, strict=True))
    if parity > 1e-4:
        raise RuntimeError(f"ONNX export differs from PyTorch by {parity:.2e}")
    cfg = trained.config
    spec = {
        "format": "xlsearch.tagger/1",
        "model": "multi-scale" if cfg.multi_scale else "single-scale",
        "textual": cfg.textual,
        "files": {"model": MODEL_FILE, "zh_vocab": ZH_VOCAB_FILE, "en_vocab": EN_VOCAB_FILE},
        "inputs": {"feature": FEATURE_INPUT, "user_tags": USER_INPUT if model.user_tags else None},
        "outputs": {"zh": ZH_OUTPUT, "en": None, "count": COUNT_OUTPUT},
        "input_feature": component_input_feature(input_feature, cfg.multi_scale),
        "zh_tags": n_labels,
        "en_tags": len(trained.en_vocab),
        "english_counterpart": "the tag vocabulary's static best counterpart (Dice over training images)",
        "config": cfg.to_dict(),
        "training": log_summary(trained.log),
        "onnx_parity_max_abs_diff": parity,
        "metrics": metrics or {},
    }
    write_component(out_dir, "tagger", spec)
    return out_dir
