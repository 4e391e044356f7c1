"""Write a W2VV bundle: the shared image encoder, both text encoders, vocabularies and manifest.json."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from xlsearch.bundle.manifest import write_bundle_manifest
from xlsearch_training.export import (
    FEATURE_NAME,
    MULTISCALE_NAME,
    OUTPUT_NAME,
    export_image_encoder,
    runtime_versions,
)
from xlsearch_training.multiscale.backbone import multiscale_encoder, multiscale_spec
from xlsearch_training.w2vv.config import TrainConfig
from xlsearch_training.w2vv.text_export import export_text_encoder
from xlsearch_training.w2vv.train import TrainedEncoder


def write_w2vv_bundle(
    folder: str | Path,
    image_encoder: torch.nn.Module,
    image_spec: dict[str, Any],
    encoders: dict[str, TrainedEncoder],
    train_config: TrainConfig,
    sentence_encoder: dict[str, Any] | None,
    fusion: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`image_encoder` maps pixels to (index vector, backbone feature) (see w2vv.image_head.ImageEncoder); `image_spec`
    holds its dim, preprocessing and backbone description. A backbone with stage taps also gives the pooled stages
    (`multiscale` output, Niu et al.) in the same pass."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    multiscale = multiscale_encoder(image_encoder)
    export_image_encoder(
        (multiscale or image_encoder).eval(),
        folder / "image_encoder.onnx",
        image_spec["preprocess"]["image_size"],
        output_names=(OUTPUT_NAME, FEATURE_NAME) + ((MULTISCALE_NAME,) if multiscale else ()),
    )
    text_specs = {}
    for lang, enc in encoders.items():
        export_text_encoder(enc.model, folder / f"text_encoder_{lang}.onnx", enc.model_config)
        enc.vocab.save(folder / f"vocab_{lang}.json")
        inputs = ["token_ids", "lengths"] + (["sentence_embedding"] if enc.model_config.sentence_dim else [])
        text_specs[lang] = {
            "file": f"text_encoder_{lang}.onnx",
            "vocab": f"vocab_{lang}.json",
            "tokenizer": {"lang": lang},
            "max_len": train_config.max_len,
            "sentence_dim": enc.model_config.sentence_dim,
            "inputs": inputs,
            "output": "embedding",
            "normalized": True,
            "model_config": asdict(enc.model_config),
            "best_val": enc.best,
        }
    manifest = {
        "model_family": "w2vv",
        "dim": int(image_spec["dim"]),
        "metric": "inner_product",
        "image_encoder": {
            "file": "image_encoder.onnx",
            "inputs": ["pixels"],
            "output": OUTPUT_NAME,
            "feature_output": FEATURE_NAME,
            "feature_dim": int(image_encoder.head.in_dim),
            "normalized": True,
            "multiscale": multiscale_spec(MULTISCALE_NAME) if multiscale else None,
            **image_spec,
        },
        "text_encoders": text_specs,
        "sentence_encoder": sentence_encoder,
        "fusion": fusion,
        "train_config": asdict(train_config),
        "versions": runtime_versions(),
        **(extra or {}),
    }
    return write_bundle_manifest(folder, manifest)
