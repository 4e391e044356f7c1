"""Chinese-CLIP (PyPI ``cn_clip``) towers: RN50, ViT-B-16, ViT-L-14, ViT-L-14-336, ViT-H-14, and a tiny config.

The package ships every model config and the BERT vocabulary, so each architecture builds offline:

- ``weights=None``: the released checkpoint through cn_clip's own loader (``cn_clip.clip.load_from_name``, which
  downloads it into ``download_root`` on first use: a machine that can reach the model hub).
- ``weights=PATH``: a local Chinese-CLIP checkpoint (``.pt`` as released), loaded by the same loader.
- ``weights="random"``: the architecture with seeded random weights (tests, cost measurements: same compute).

The text tower is ``CLIP.encode_text`` (RoBERTa-wwm / RBT3, the [CLS] state through ``text_projection``; padding id 0
masked); the image tower ``CLIP.encode_image``. The reference tokenizer is ``cn_clip.clip.tokenize`` (context 52).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from xlsearch_training.pretrained.towers import ImageTower, PretrainedTowers, TextTower, clip_preprocess

__all__ = ["CN_CLIP_MODELS", "TINY_CN_CLIP", "build_cn_clip", "cn_clip_vocab"]

CONTEXT_LENGTH = 52  # what every Chinese-CLIP model was trained with
# A tiny architecture for tests: ViT 32 px / patch 8, 2 layers, BERT 2 x 64, the real vocabulary (21128 pieces).
TINY_CN_CLIP: dict[str, Any] = {
    "embed_dim": 32,
    "image_resolution": 32,
    "vision_layers": 2,
    "vision_width": 64,
    "vision_patch_size": 8,
    "vocab_size": 21128,
    "text_attention_probs_dropout_prob": 0.1,
    "text_hidden_act": "gelu",
    "text_hidden_dropout_prob": 0.1,
    "text_hidden_size": 64,
    "text_initializer_range": 0.02,
    "text_intermediate_size": 128,
    "text_max_position_embeddings": 64,
    "text_num_attention_heads": 2,
    "text_num_hidden_layers": 2,
    "text_type_vocab_size": 2,
}


def _model_info() -> dict[str, dict[str, Any]]:
    from cn_clip.clip.utils import _MODEL_INFO

    return dict(_MODEL_INFO)


CN_CLIP_MODELS = ("RN50", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14")


def cn_clip_vocab() -> Path:
    import cn_clip

    return Path(cn_clip.__file__).parent / "clip" / "vocab.txt"


def _config(struct: str) -> dict[str, Any]:
    """The merged vision + text config of ``"ViT-B-16@RoBERTa-wwm-ext-base-chinese"`` from the package's files."""
    import cn_clip

    folder = Path(cn_clip.__file__).parent / "clip" / "model_configs"
    vision, text = struct.split("@")
    info = json.loads((folder / f"{vision}.json").read_text())
    info.update(json.loads((folder / f"{text}.json").read_text()))
    if isinstance(info["vision_layers"], str):  # "[3,4,6,3]" for the ResNet
        info["vision_layers"] = json.loads(info["vision_layers"])
    return info


def _random_model(config: dict[str, Any], seed: int) -> torch.nn.Module:
    from cn_clip.clip.model import CLIP

    torch.manual_seed(seed)
    return CLIP(**config).float()  # fp32 throughout (cn_clip's create_model would cast to fp16)


def build_cn_clip(
    name: str, weights: str | None = None, seed: int = 0, download_root: str | None = None
) -> PretrainedTowers:
    """Towers of Chinese-CLIP ``name`` (one of CN_CLIP_MODELS, or "tiny": random weights only)."""
    from cn_clip.clip import tokenize

    if name == "tiny":
        if weights not in (None, "random"):
            raise ValueError("the tiny Chinese-CLIP config has random weights only")
        config, weights = dict(TINY_CN_CLIP), "random"
    elif name in CN_CLIP_MODELS:
        config = _config(_model_info()[name]["struct"])
    else:
        raise ValueError(f"unknown Chinese-CLIP model {name!r}; available: {', '.join(CN_CLIP_MODELS)}, tiny")
    resolution = (
        int(_model_info()[name]["input_resolution"]) if name != "tiny" else config["image_resolution"]
    )
    if weights == "random":
        model = _random_model(config, seed)
        label = f"random (seed {seed})"
    else:
        from cn_clip.clip import load_from_name

        info = _model_info()[name]
        vision, text = info["struct"].split("@")
        with contextlib.redirect_stdout(io.StringIO()):  # the loader prints the configs it reads
            if weights is None:  # the released checkpoint (downloads on first use)
                model, _ = load_from_name(name, device="cpu", download_root=download_root)
            else:
                model, _ = load_from_name(
                    weights,
                    "cpu",
                    vision_model_name=vision,
                    text_model_name=text,
                    input_resolution=resolution,
                )
        model = model.float()
        label = weights or f"released ({name})"
    model.eval()
    return PretrainedTowers(
        family="cn_clip",
        model_name=name,
        weights=label,
        image=ImageTower(model.visual),
        text=TextTower(model.encode_text, model),
        dim=int(config["embed_dim"]),
        preprocess=clip_preprocess(resolution, "squash"),
        tokenizer_file=cn_clip_vocab(),
        tokenizer_spec={"kind": "wordpiece", "lower_case": True, "context_length": CONTEXT_LENGTH},
        reference_tokenize=lambda texts: tokenize(texts, context_length=CONTEXT_LENGTH),
        info={"config": config, "context_length": CONTEXT_LENGTH},
    ).eval()
