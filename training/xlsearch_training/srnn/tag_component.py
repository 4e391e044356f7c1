"""ONNX export of a trained S-CNN-RNN tagger and the servable component folder (read by
``xlsearch.bundle.sequence_tagger.SequenceTagger``, which a bundle loads for a tagger of this format).

Folder: ``concepts.onnx`` (feature [B,F] (+ user_tags [B,Cz]) -> h, c [B,H] (+ scores [B,Cz]: s^)),
``label_step.onnx`` (token [B], h, c -> log_probs [B,Cz+1], h_out, c_out), ``tags_zh.json`` / ``tags_en.json``,
``component.json``. Dynamic batch axes; the export is checked against PyTorch: largest absolute difference of the
graphs' outputs, and the same tag sequences from the numpy greedy decoding (free-running and k = 5).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from xlsearch.bundle.components import write_component
from xlsearch.bundle.sequence_tagger import SEQUENCE_TAGGER_FORMAT, SequenceTagger
from xlsearch.encode.onnx import make_session
from xlsearch_training.srnn.fit import log_summary
from xlsearch_training.srnn.model import SCNNRNN
from xlsearch_training.srnn.tag_train import TrainedSequenceTagger

INIT_FILE, STEP_FILE, ZH_VOCAB_FILE, EN_VOCAB_FILE = (
    "concepts.onnx",
    "label_step.onnx",
    "tags_zh.json",
    "tags_en.json",
)
PARITY_TOL = 1e-4


class _Init(nn.Module):
    def __init__(self, model: SCNNRNN, scores: bool) -> None:
        super().__init__()
        self.model, self.scores = model, scores

    def forward(self, feature: Tensor, user_tags: Tensor | None = None) -> tuple[Tensor, ...]:
        interface, logits = self.model.encode(feature, user_tags)
        h, c = self.model.decoder.init_state(interface)
        return (h, c, torch.sigmoid(logits)) if self.scores else (h, c)


class _Step(nn.Module):
    def __init__(self, model: SCNNRNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, token: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.model.step(token, h, c)


def export_sequence_tagger(trained: TrainedSequenceTagger, folder: Path, opset: int = 17) -> None:
    model = trained.model.eval()
    n_labels, dim = len(trained.zh_vocab), model.feature_dim
    user = trained.config.user_tags
    inputs = ["feature", *(["user_tags"] if user else [])]
    outputs = ["h", "c", *(["scores"] if trained.has_scores else [])]
    args: tuple[Tensor, ...] = (torch.zeros(2, dim),) + ((torch.zeros(2, n_labels),) if user else ())
    batch = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Init(model, trained.has_scores), args, str(folder / INIT_FILE), input_names=inputs,
            output_names=outputs, dynamic_axes={n: batch for n in inputs + outputs}, opset_version=opset,
            dynamo=False,
        )  # fmt: skip
        h = torch.zeros(2, model.hidden)
        names = ["token", "h", "c", "log_probs", "h_out", "c_out"]
        torch.onnx.export(
            _Step(model), (torch.tensor([n_labels + 1, 0]), h, h), str(folder / STEP_FILE),
            input_names=names[:3], output_names=names[3:], dynamic_axes={n: batch for n in names},
            opset_version=opset, dynamo=False,
        )  # fmt: skip
    for name in (INIT_FILE, STEP_FILE):
        onnx.checker.check_model(onnx.load(str(folder / name)), full_check=True)


@torch.no_grad()
def graph_parity(
    trained: TrainedSequenceTagger, folder: Path, x: np.ndarray, user: np.ndarray | None
) -> float:
    """Largest absolute difference between PyTorch and ONNX Runtime over both graphs' outputs on ``x``."""
    model = trained.model.eval()
    f = torch.from_numpy(x.astype(np.float32))
    u = torch.from_numpy(user.astype(np.float32)) if user is not None else None
    expected = [t.numpy() for t in _Init(model, trained.has_scores)(f, u)]
    feeds = {"feature": f.numpy(), **({"user_tags": u.numpy()} if u is not None else {})}
    got = make_session(folder / INIT_FILE, 1).run(
        ["h", "c", *(["scores"] if trained.has_scores else [])], feeds
    )
    worst = max(float(np.abs(a - b).max()) for a, b in zip(expected, got, strict=True))
    tokens = np.arange(len(x), dtype=np.int64) % (len(trained.zh_vocab) + 2)
    step_expected = [t.numpy() for t in model.step(torch.from_numpy(tokens), *map(torch.from_numpy, got[:2]))]
    step_got = make_session(folder / STEP_FILE, 1).run(
        ["log_probs", "h_out", "c_out"], {"token": tokens, "h": got[0], "c": got[1]}
    )
    return max(worst, *(float(np.abs(a - b).max()) for a, b in zip(step_expected, step_got, strict=True)))


def write_sequence_tagger(
    trained: TrainedSequenceTagger,
    out_dir: Path,
    input_feature: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    parity_x: np.ndarray | None = None,
) -> Path:
    """Export, vocabularies, parity checks and component.json into a fresh ``out_dir``."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    export_sequence_tagger(trained, out_dir)
    trained.zh_vocab.save(out_dir / ZH_VOCAB_FILE)
    trained.en_vocab.save(out_dir / EN_VOCAB_FILE)
    dim, n_labels = trained.model.feature_dim, len(trained.zh_vocab)
    x = (
        parity_x
        if parity_x is not None
        else np.random.default_rng(0).normal(size=(4, dim)).astype(np.float32)
    )
    user = (
        (np.random.default_rng(1).random((len(x), n_labels)) < 0.05).astype(np.float32)
        if trained.config.user_tags
        else None
    )
    parity = graph_parity(trained, out_dir, x, user)
    if parity > PARITY_TOL:
        raise RuntimeError(f"ONNX export differs from PyTorch by {parity:.2e}")
    spec: dict[str, Any] = {
        "format": SEQUENCE_TAGGER_FORMAT,
        "model": "s-cnn-rnn",
        "order": trained.config.order,
        "interface": trained.config.interface,
        "deep_supervision": trained.config.deep_supervision,
        "files": {
            "concepts": INIT_FILE,
            "step": STEP_FILE,
            "zh_vocab": ZH_VOCAB_FILE,
            "en_vocab": EN_VOCAB_FILE,
        },
        "inputs": {"feature": "feature", "user_tags": "user_tags" if trained.config.user_tags else None},
        "outputs": {"scores": "scores" if trained.has_scores else None},
        "labels": n_labels,
        "tokens": {"end": n_labels, "start": n_labels + 1},
        "max_labels": trained.config.max_labels,
        "hidden": trained.model.hidden,
        "input_feature": input_feature,
        "zh_tags": n_labels,
        "en_tags": len(trained.en_vocab),
        "english_counterpart": "the tag vocabulary's static best counterpart (Dice over training images)",
        "config": trained.config.to_dict(),
        "training": log_summary(trained.log),
        "onnx_parity_max_abs_diff": parity,
        "metrics": metrics or {},
    }
    spec = write_component(out_dir, "tagger", spec)
    spec["onnx_parity_sequences"] = check_sequences(trained, out_dir, spec, x, user)
    write_component(out_dir, "tagger", {k: v for k, v in spec.items() if k != "kind"})
    return out_dir


def check_sequences(
    trained: TrainedSequenceTagger, folder: Path, spec: dict[str, Any], x: np.ndarray, user: np.ndarray | None
) -> dict[str, Any]:
    """The served component decodes exactly the PyTorch model's tag sequences (free-running and k = 5)."""
    tagger = SequenceTagger.load(folder, spec, intra_op_threads=1)
    user_lists = None
    if user is not None:
        user_lists = [[trained.zh_vocab.tags[j] for j in np.flatnonzero(row)] for row in user]
    for k in (None, 5):
        ours, _ = tagger.decode(x, k=k, user_tags=user_lists)
        theirs, _ = trained.decode(x, k=k, user=user)
        if [[j for j, _ in s] for s in ours] != [[j for j, _ in s] for s in theirs]:
            raise RuntimeError(f"{folder}: ONNX decoding (k={k}) differs from the PyTorch model's")
    return {"images": len(x), "k": [None, 5], "identical_sequences": True}
