"""Pretrained image + text towers as export-ready modules, one description for every family.

A `PretrainedTowers` holds the two modules the bundle exports — `ImageTower` (pixels -> (L2-normalised
embedding, the same vector as the components' ``feature``)) and `TextTower` (token ids -> L2-normalised embedding,
padding masked inside) — plus the preprocessing, the tokenizer file and spec the serving side reads, and the
training side's own tokenizer (``reference_tokenize``) that the serving tokenizer must equal.

Families: ``cn_clip`` (`xlsearch_training.pretrained.cn_clip`) and ``open_clip`` multilingual
(`xlsearch_training.pretrained.open_clip_hf`). `parse_tower_name` reads the ``--cm`` value of
``xlsearch bundle pretrained`` (``cn-clip:ViT-B-16``, ``open-clip:xlm-roberta-base-ViT-B-32``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from xlsearch.encode.preprocess import PreprocessConfig

__all__ = ["FAMILIES", "ImageTower", "PretrainedTowers", "TextTower", "parse_tower_name"]

FAMILIES = {"cn-clip": "cn_clip", "cn_clip": "cn_clip", "open-clip": "open_clip", "open_clip": "open_clip"}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def parse_tower_name(value: str) -> tuple[str, str]:
    """``cn-clip:ViT-B-16`` -> ("cn_clip", "ViT-B-16")."""
    family, sep, name = value.partition(":")
    if not sep or family not in FAMILIES or not name:
        raise ValueError(
            f"--cm {value!r}: expected FAMILY:MODEL with FAMILY one of cn-clip, open-clip "
            "(e.g. cn-clip:ViT-B-16, open-clip:xlm-roberta-base-ViT-B-32)"
        )
    return FAMILIES[family], name


class ImageTower(nn.Module):
    """pixels [B,3,S,S] -> (embedding [B,D], feature [B,D]), both the L2-normalised CLIP image embedding: the
    components (tagger, captioner) of a pretrained bundle read the CLIP embedding itself."""

    def __init__(self, encode: nn.Module) -> None:
        super().__init__()
        self.encode = encode

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        out = self.encode(pixels)
        emb = F.normalize((out[0] if isinstance(out, tuple) else out).float(), dim=-1)
        return emb, emb * 1.0  # a distinct graph output for the feature


class TextTower(nn.Module):
    """token_ids [B,T] (right-padded with ``pad_id``) -> L2-normalised embedding [B,D]."""

    def __init__(self, encode: Callable[[Tensor], Tensor], modules: nn.Module) -> None:
        super().__init__()
        self.modules_ = modules  # registered so eval()/parameters reach the wrapped weights
        self._encode = encode

    def forward(self, token_ids: Tensor) -> Tensor:
        return F.normalize(self._encode(token_ids).float(), dim=-1)


@dataclass
class PretrainedTowers:
    family: str  # cn_clip | open_clip
    model_name: str
    weights: str  # "random (seed N)", a checkpoint tag, or a local path
    image: ImageTower
    text: TextTower
    dim: int
    preprocess: PreprocessConfig
    tokenizer_file: Path  # copied into the bundle
    tokenizer_spec: dict[str, Any]  # kind + options (the writer adds "file")
    reference_tokenize: Callable[[list[str]], Tensor] = field(repr=False)  # the training side's own tokenizer
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def backbone(self) -> dict[str, Any]:
        return {"kind": self.family, "model_name": self.model_name, "weights": self.weights}

    @property
    def backbone_name(self) -> str:
        return f"{self.family}:{self.model_name}"

    def eval(self) -> PretrainedTowers:
        self.image.eval()
        self.text.eval()
        return self


def clip_preprocess(image_size: int, resize_mode: str = "squash") -> PreprocessConfig:
    """CLIP's normalisation; Chinese-CLIP resizes straight to the square (squash), bicubic."""
    return PreprocessConfig(
        image_size=image_size,
        resize_size=image_size,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        interpolation="bicubic",
        resize_mode=resize_mode,
    )
