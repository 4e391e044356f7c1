"""Write an A3VSE bundle in the same format as the W2VV bundle (``w2vv.bundle_writer``), so the indexer, server and
benchmark load it unchanged:

- image_encoder.onnx: `pixels` -> `embedding` (regions -> FC -> attentive encoder -> L2-normalised, K*H-d) and
  `feature` (the L2-normalised mean of the region map = the pooled backbone vector),
- text_encoder_{zh,en}.onnx: `token_ids`, `lengths` (and `sentence_embedding` [B,E] when the encoder has the
  sentence branch; that input alone for "sentence_only") -> `embedding`, with vocab_{zh,en}.json,
- manifest.json with "model_family": "a3vse", the sentence encoder (for CL in the e5 space) and the fusion weight.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from xlsearch.bundle.manifest import write_bundle_manifest
from xlsearch_training.a3vse.config import A3VSETrainConfig
from xlsearch_training.a3vse.model import A3VSEImageEncoder, TextEncoder
from xlsearch_training.a3vse.regions import RegionExtractor
from xlsearch_training.a3vse.train import TrainedA3VSE
from xlsearch_training.export import FEATURE_NAME, OUTPUT_NAME, export_image_encoder, runtime_versions

TEXT_INPUTS = ("token_ids", "lengths")
SENTENCE_INPUT = "sentence_embedding"


def text_input_names(encoder: TextEncoder) -> list[str]:
    """The ONNX inputs of this text encoder, in order (what the bundle manifest records as "inputs")."""
    tokens = [] if encoder.mode == "sentence_only" else list(TEXT_INPUTS)
    return tokens + ([SENTENCE_INPUT] if encoder.sentence_dim else [])


class _TextEmbed(nn.Module):
    def __init__(self, encoder: TextEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, token_ids: Tensor, lengths: Tensor) -> Tensor:
        return self.encoder(token_ids, lengths)


class _FusedTextEmbed(_TextEmbed):
    def forward(self, token_ids: Tensor, lengths: Tensor, sentence_embedding: Tensor) -> Tensor:  # type: ignore[override]
        return self.encoder(token_ids, lengths, sentence_embedding)


class _SentenceTextEmbed(_TextEmbed):
    def forward(self, sentence_embedding: Tensor) -> Tensor:  # type: ignore[override]
        return self.encoder(None, None, sentence_embedding)  # type: ignore[arg-type]  # tokens unused


def export_a3vse_text_encoder(encoder: TextEncoder, path: str | Path, opset: int = 17) -> Path:
    """token_ids [B,T] int64, lengths [B] int64 (+ sentence_embedding [B,E] float32) -> embedding [B,K*H];
    dynamic batch and time axes. A "sentence_only" encoder has the sentence_embedding input alone."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = torch.tensor([[2, 3, 4, 5, 1], [3, 2, 0, 0, 0]], dtype=torch.int64).clamp(
        max=encoder.vocab_size - 1
    )
    lengths = torch.tensor([5, 2], dtype=torch.int64)
    names = text_input_names(encoder)
    sentence = torch.randn(2, encoder.sentence_dim)
    if encoder.mode == "sentence_only":
        module: nn.Module = _SentenceTextEmbed(encoder)
        args: tuple[Tensor, ...] = (sentence,)
    elif encoder.sentence_dim:
        module, args = _FusedTextEmbed(encoder), (ids, lengths, sentence)
    else:
        module, args = _TextEmbed(encoder), (ids, lengths)
    axes = {"token_ids": {0: "batch", 1: "time"}, "lengths": {0: "batch"}, SENTENCE_INPUT: {0: "batch"}}
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # LSTM/batch_first tracer notices are expected
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=names,
                output_names=[OUTPUT_NAME],
                dynamic_axes={**{n: axes[n] for n in names}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
    finally:
        encoder.train(was_training)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return path


def write_a3vse_bundle(
    folder: str | Path,
    extractor: RegionExtractor,
    trained: TrainedA3VSE,
    backbone: dict[str, Any],
    train_config: A3VSETrainConfig,
    sentence_encoder: dict[str, Any] | None,
    fusion: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`backbone` is the backbone dict the extractor was built from ({"kind": "efficientnet_lite0"}, ...)."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    pre = extractor.preprocess
    image_encoder = A3VSEImageEncoder(extractor, trained.visual).eval()
    export_image_encoder(
        image_encoder, folder / "image_encoder.onnx", pre.image_size, output_names=(OUTPUT_NAME, FEATURE_NAME)
    )
    text_specs = {}
    for lang, t in trained.text.items():
        export_a3vse_text_encoder(t.encoder, folder / f"text_encoder_{lang}.onnx")
        t.vocab.save(folder / f"vocab_{lang}.json")
        text_specs[lang] = {
            "file": f"text_encoder_{lang}.onnx",
            "vocab": f"vocab_{lang}.json",
            "tokenizer": {"lang": lang},
            "max_len": train_config.max_len,
            "sentence_dim": t.encoder.sentence_dim,
            "inputs": text_input_names(t.encoder),
            "output": OUTPUT_NAME,
            "normalized": True,
            "model_config": {**trained.model_config.to_dict(), "vocab_size": t.encoder.vocab_size},
            "best_val": t.best,
        }
    manifest = {
        "model_family": "a3vse",
        "dim": trained.model_config.embed_dim,
        "metric": "inner_product",
        "image_encoder": {
            "file": "image_encoder.onnx",
            "inputs": ["pixels"],
            "output": OUTPUT_NAME,
            "feature_output": FEATURE_NAME,
            "feature_dim": extractor.dim,
            "normalized": True,
            "dim": trained.model_config.embed_dim,
            "preprocess": pre.to_dict(),
            "backbone": backbone,
            "backbone_name": extractor.name,
            "regions": {"extractor": extractor.name, "count": extractor.num_regions, "dim": extractor.dim},
        },
        "text_encoders": text_specs,
        "sentence_encoder": sentence_encoder,
        "fusion": fusion,
        "train_config": train_config.to_dict(),
        "versions": runtime_versions(),
        **(extra or {}),
    }
    return write_bundle_manifest(folder, manifest)


__all__ = ["export_a3vse_text_encoder", "text_input_names", "write_a3vse_bundle"]
