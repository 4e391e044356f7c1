"""Export a trained captioner as a component folder: two ONNX graphs (image embedding, one decoding step; dynamic
batch), the vocabulary, the tag vocabulary (tag strategy), the sentence pool for recommendation, ``component.json``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from xlsearch.bundle.captioner import Captioner
from xlsearch.bundle.components import write_component
from xlsearch_training.captioning.config import CaptionerConfig
from xlsearch_training.captioning.decode import decode
from xlsearch_training.captioning.model import ShowAndTell
from xlsearch_training.captioning.train import Trained

EMBED_FILE, STEP_FILE, VOCAB_FILE = "image_embedding.onnx", "decoder_step.onnx", "vocab.json"
TAG_VOCAB_FILE, POOL_FILE = "tag_vocab.json", "sentence_pool.json"


class _Embed(nn.Module):
    def __init__(self, model: ShowAndTell) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: Tensor, tags: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.model.init_state(features, tags)


class _Step(nn.Module):
    def __init__(self, model: ShowAndTell) -> None:
        super().__init__()
        self.model = model

    def forward(self, token: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.model.step(token, h, c)


def export_onnx(model: ShowAndTell, folder: Path, opset: int = 17) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    batch = {0: "batch"}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            args: tuple[Tensor, ...] = (torch.zeros(2, model.feature_dim),)
            names = ["features"]
            if model.tag_dim:
                args += (torch.zeros(2, model.tag_dim),)
                names.append("tags")
            torch.onnx.export(
                _Embed(model),
                args,
                str(folder / EMBED_FILE),
                input_names=names,
                output_names=["h", "c"],
                dynamic_axes={n: batch for n in [*names, "h", "c"]},
                opset_version=opset,
                dynamo=False,
            )
            h = torch.zeros(2, model.hidden)
            torch.onnx.export(
                _Step(model),
                (torch.tensor([2, 3]), h, h),
                str(folder / STEP_FILE),
                input_names=["token", "h", "c"],
                output_names=["log_probs", "h_out", "c_out"],
                dynamic_axes={n: batch for n in ["token", "h", "c", "log_probs", "h_out", "c_out"]},
                opset_version=opset,
                dynamo=False,
            )
    finally:
        model.train(was_training)
    for name in (EMBED_FILE, STEP_FILE):
        onnx.checker.check_model(onnx.load(str(folder / name)), full_check=True)


def write_captioner(
    trained: Trained,
    folder: Path,
    cfg: CaptionerConfig,
    input_feature: dict[str, Any],
    sentence_pool: list[str],
    extra: dict[str, Any] | None = None,
    parity_features: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write the component folder and its ``component.json``; returns the spec. With ``parity_features`` the exported
    graphs + numpy beam search must give exactly the PyTorch model's sentences (greedy and beam) on those images."""
    folder = Path(folder)
    export_onnx(trained.model, folder)
    trained.vocab.save(folder / VOCAB_FILE)
    (folder / POOL_FILE).write_text(json.dumps(sentence_pool, ensure_ascii=False), encoding="utf-8")
    spec: dict[str, Any] = {
        "input_feature": input_feature,
        "strategy": trained.strategy,
        "image_embedding": EMBED_FILE,
        "decoder_step": STEP_FILE,
        "vocab": VOCAB_FILE,
        "sentence_pool": POOL_FILE,
        "inputs": {"image_embedding": ["features", *(["tags"] if trained.tag_inputs else [])]},
        "hidden": trained.model.hidden,
        "vocab_size": len(trained.vocab),
        "max_len": cfg.max_len,
        "beam_size": cfg.beam_size,
        "length_penalty": cfg.length_penalty,
        "config": cfg.to_dict(),
        "val_cider_d": trained.val_cider,
        **(extra or {}),
    }
    if trained.tag_inputs is not None:
        (folder / TAG_VOCAB_FILE).write_text(
            json.dumps(trained.tag_inputs.vocab, ensure_ascii=False), "utf-8"
        )
        spec["tag_vocab"] = TAG_VOCAB_FILE
    spec = write_component(folder, "captioner", spec)
    if parity_features is not None and len(parity_features):
        spec["onnx_parity"] = check_parity(trained, folder, spec, cfg, parity_features)
        spec = write_component(folder, "captioner", {k: v for k, v in spec.items() if k != "kind"})
    return spec


def check_parity(
    trained: Trained, folder: Path, spec: dict[str, Any], cfg: CaptionerConfig, features: np.ndarray
) -> dict[str, Any]:
    """Decode ``features`` with the ONNX component and with PyTorch (greedy and beam); raise on any difference."""
    captioner = Captioner.load(folder, spec, intra_op_threads=1)
    features = np.asarray(features, dtype=np.float32)
    tag_lists = trained.tag_lists([], features) if trained.tag_inputs is not None else None
    tag_bag = trained.tag_inputs.bag(tag_lists) if trained.tag_inputs is not None and tag_lists else None
    for beam in sorted({1, cfg.beam_size}):
        ours = captioner.generate(features, beam_size=beam, tags=tag_lists)
        theirs = decode(
            trained.model,
            trained.vocab,
            features,
            tag_bag,
            beam_size=beam,
            max_len=cfg.max_len,
            length_penalty=cfg.length_penalty,
        )
        if [h[0].tokens for h in ours] != [t[0][0] for t in theirs]:
            raise RuntimeError(f"{folder}: ONNX decoding (beam {beam}) differs from the PyTorch model's")
    return {"images": len(features), "beams": sorted({1, cfg.beam_size}), "identical_sentences": True}
