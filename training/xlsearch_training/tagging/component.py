"""ONNX export of a trained tagger and the one-call API that writes a servable tagger component folder.

Folder layout: ``tagger.onnx`` (feature [B,F] (+ user_tags [B,Cz]) -> zh_probs [B,Cz], en_probs [B,Ce] for the
multi-task and cascade models, count [B]), ``tags_zh.json`` / ``tags_en.json`` (xlsearch.encode.tag_vocab format) and
``component.json`` (written by ``xlsearch.bundle.components.write_component``).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from xlsearch.bundle.components import write_component
from xlsearch.bundle.tagger import COUNT_OUTPUT, EN_OUTPUT, FEATURE_INPUT, USER_INPUT, ZH_OUTPUT
from xlsearch.data.manifest import Manifest
from xlsearch.encode.onnx import make_session
from xlsearch.encode.tag_vocab import extract_image_tags
from xlsearch_training.tagging.config import TaggerConfig
from xlsearch_training.tagging.data import tag_data
from xlsearch_training.tagging.evaluate import evaluate_modes
from xlsearch_training.tagging.models import ServedTagger
from xlsearch_training.tagging.train import TrainedTagger, fit_tagger

MODEL_FILE, ZH_VOCAB_FILE, EN_VOCAB_FILE = "tagger.onnx", "tags_zh.json", "tags_en.json"


def output_names(model: ServedTagger) -> list[str]:
    return [ZH_OUTPUT, COUNT_OUTPUT] if model.kind == "mlp" else [ZH_OUTPUT, EN_OUTPUT, COUNT_OUTPUT]


def export_tagger(model: ServedTagger, path: Path, feature_dim: int, zh_dim: int, opset: int = 17) -> Path:
    """TorchScript-based export with a dynamic batch axis, checked with onnx.checker."""
    model.eval()
    inputs = [FEATURE_INPUT] + ([USER_INPUT] if model.user_tags else [])
    outputs = output_names(model)
    dummy: tuple[torch.Tensor, ...] = (torch.zeros(2, feature_dim),)
    if model.user_tags:
        dummy += (torch.zeros(2, zh_dim),)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model,
            dummy,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in inputs + outputs},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(str(path), full_check=True)
    return path


@torch.no_grad()
def onnx_parity(model: ServedTagger, path: Path, x: np.ndarray, user: np.ndarray | None = None) -> float:
    """Largest absolute difference between the PyTorch model and its ONNX export over every output."""
    model.eval()
    feeds = {FEATURE_INPUT: x.astype(np.float32)}
    args = [torch.from_numpy(feeds[FEATURE_INPUT])]
    if model.user_tags:
        if user is None:
            raise ValueError("this tagger takes user tags; pass a multi-hot `user`")
        feeds[USER_INPUT] = user.astype(np.float32)
        args.append(torch.from_numpy(feeds[USER_INPUT]))
    expected = [t.numpy() for t in model(*args)]
    got = make_session(path, intra_op_threads=1).run(output_names(model), feeds)
    return max(float(np.abs(a - b).max()) for a, b in zip(expected, got, strict=True))


def write_tagger_component(
    trained: TrainedTagger,
    out_dir: Path,
    input_feature: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    parity_x: np.ndarray | None = None,
) -> Path:
    """Export, vocabularies, parity check and component.json into a fresh ``out_dir``."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    dim, cz = int(input_feature["dim"]), len(trained.zh_vocab)
    model = trained.model
    export_tagger(model, out_dir / MODEL_FILE, dim, cz)
    trained.zh_vocab.save(out_dir / ZH_VOCAB_FILE)
    trained.en_vocab.save(out_dir / EN_VOCAB_FILE)
    x = (
        parity_x
        if parity_x is not None
        else np.random.default_rng(0).normal(size=(3, dim)).astype(np.float32)
    )
    user = None
    if model.user_tags:
        user = (np.random.default_rng(1).random((len(x), cz)) < 0.05).astype(np.float32)
    parity = onnx_parity(model, out_dir / MODEL_FILE, x, user)
    if parity > 1e-4:
        raise RuntimeError(f"ONNX export differs from PyTorch by {parity:.2e}")
    spec = {
        "format": "xlsearch.tagger/1",
        "model": trained.config.model,
        "files": {"model": MODEL_FILE, "zh_vocab": ZH_VOCAB_FILE, "en_vocab": EN_VOCAB_FILE},
        "inputs": {"feature": FEATURE_INPUT, "user_tags": USER_INPUT if model.user_tags else None},
        "outputs": {
            "zh": ZH_OUTPUT,
            "en": EN_OUTPUT if model.kind != "mlp" else None,
            "count": COUNT_OUTPUT,
        },
        "input_feature": input_feature,
        "zh_tags": cz,
        "en_tags": len(trained.en_vocab),
        "mean_count": trained.mean_count,
        "english_counterpart": "argmax over the zh tag's stored counterparts of Dice(zh, en) x P(en | image)",
        "config": trained.config.to_dict(),
        "training": trained.log,
        "onnx_parity_max_abs_diff": parity,
        "metrics": metrics or {},
    }
    write_component(out_dir, "tagger", spec)
    return out_dir


def train_tagger_component(
    manifest: Manifest,
    features: dict[str, np.ndarray],
    out_dir: Path,
    config: TaggerConfig,
    input_feature: dict[str, Any],
    seed: int,
    extra_english: dict[str, list[str]] | None = None,
) -> Path:
    """Train ``config.model`` + the count regressor on the manifest's train split (val picks the epochs), measure
    it on its test split (when that holds tagged images) and write the component folder; returns ``out_dir``."""
    if int(input_feature["dim"]) != len(next(iter(features.values()))):
        raise ValueError(f"input_feature dim {input_feature['dim']} != feature length")
    tags = extract_image_tags(manifest.records)
    trained = fit_tagger(manifest, features, config, seed, tags, extra_english)
    test = tag_data(manifest.split("test"), features, tags, trained.zh_vocab, trained.en_vocab)
    metrics: dict[str, Any] = {}
    if test.zh_tagged.any():
        metrics = {"split": "test", "images": int(test.zh_tagged.sum()), **evaluate_modes(trained, test)}
    parity_x = test.x[:4] if len(test.ids) else None
    return write_tagger_component(trained, Path(out_dir), input_feature, metrics, parity_x)
