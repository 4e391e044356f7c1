"""Data preparation of the A3VSE experiment. Once per experiment: the un-annotated pool, region features of the
dataset and the pool, the ImageNet concept sequences (``prepare``, every step cached). Per run: the annotated subset
of a seeded split's training images, the split with the other images' text hidden, and each language's training,
pseudo-pair and validation data (``lang_data``)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.data.datasets.unannotated import build_pool, default_candidates
from xlsearch.data.manifest import Manifest
from xlsearch.encode.text import tokenizer_for
from xlsearch_training.a3vse.config import A3VSEExperiment
from xlsearch_training.a3vse.regions import RegionStore, build_region_extractor, extract_regions
from xlsearch_training.a3vse.semantics import build_semantics
from xlsearch_training.a3vse.train import Annotated, Queries, Unannotated
from xlsearch_training.backbones import EfficientNetLite0Backbone


@dataclasses.dataclass
class Prepared:
    store: RegionStore  # regions of the dataset images and of the pool
    pool_ids: list[str]
    semantics: dict[
        str, dict[str, list[str]]
    ]  # kind -> image id -> tokens, per language key f"{kind}:{lang}"
    extractor: Any
    backbone: dict[str, Any]
    coverage_zh: dict[str, float]
    # the concept sequences as text (for the sentence branch), per key f"{kind}:{lang}": image id -> string
    concept_texts: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)


def _concat(stores: list[RegionStore]) -> RegionStore:
    return RegionStore(
        [i for s in stores for i in s.ids],
        np.concatenate([s.regions for s in stores]),
        [x for s in stores for x in s.skipped],
    )


def prepare(
    manifest: Manifest, runs: Path, experiment: A3VSEExperiment, pool_cap: int | None, progress: bool = True
) -> Prepared:
    """The un-annotated pool (runs/pool), region features of the dataset and the pool (runs/cache/regions) and both
    kinds of concept sequences (runs/cache/semantics_*.json); every step is cached."""
    pool_cfg = experiment.pool
    cands = default_candidates(
        manifest,
        Path(pool_cfg.tuxpaint_stamps) if pool_cfg.tuxpaint_stamps else None,
        [Path(f) for f in pool_cfg.folders],
    )
    cap = pool_cap if pool_cap is not None else pool_cfg.cap
    pool = build_pool(runs / "pool", cands, cap, seed=0, progress=progress)
    print(f"      un-annotated pool: {len(pool)} images (cap {cap}, {len(cands)} candidates)")
    extractor = build_region_extractor(experiment.backbone)
    cache = runs / "cache" / "regions"
    store = _concat(
        [
            extract_regions(manifest, extractor, cache / "dataset", progress=progress),
            extract_regions(pool, extractor, cache / "pool", progress=progress),
        ]
    )
    pool_ids = [r.id for r in pool.records if r.id in set(store.ids)]
    classifier = extractor.classifier()
    names = EfficientNetLite0Backbone.class_names()
    if classifier is None or names is None:
        raise ValueError(
            "regional semantics need a backbone with an ImageNet classifier (efficientnet_lite0)"
        )
    semantics: dict[str, dict[str, list[str]]] = {}
    concept_texts: dict[str, dict[str, str]] = {}
    coverage = {}
    base = experiment.semantics
    for kind in ("regional", "global"):
        path = runs / "cache" / f"semantics_{kind}.json"
        if path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            sem = build_semantics(
                store.ids, store.regions, classifier, names, dataclasses.replace(base, kind=kind)
            )
            data = {"en": sem.en, "zh": sem.zh, "coverage_zh": sem.coverage_zh}
            path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        coverage[kind] = data["coverage_zh"]
        for lang in ("zh", "en"):
            tok = tokenizer_for(lang)
            semantics[f"{kind}:{lang}"] = {i: tok.tokenize(s) if s else [] for i, s in data[lang].items()}
            concept_texts[f"{kind}:{lang}"] = data[lang]
    return Prepared(store, pool_ids, semantics, extractor, experiment.backbone, coverage, concept_texts)


def annotated_subset(split: Manifest, fraction: float, seed: int) -> set[str]:
    """The first round(fraction * N) training images of a seeded order (so 20% is inside 50% inside 100%)."""
    train = sorted(r.id for r in split.split("train"))
    order = np.random.default_rng(1000 + seed).permutation(len(train))
    return {train[i] for i in order[: max(2, round(fraction * len(train)))]}


def strip_text(split: Manifest, keep: set[str]) -> Manifest:
    """The split with the text of un-selected training images removed."""
    records = [
        r
        if r.split != "train" or r.id in keep
        else dataclasses.replace(r, en=[], zh=[], tags_en=[], tags_zh=[])
        for r in split.records
    ]
    return Manifest(split.root, records)


def unannotated_ids(prep: Prepared, split: Manifest, keep: set[str]) -> list[str]:
    """The training images whose text is hidden, then the extra pool."""
    index = prep.store.index()
    return [r.id for r in split.split("train") if r.id not in keep and r.id in index] + prep.pool_ids


SentenceVectors = Callable[[list[str]], np.ndarray]


def lang_data(
    prep: Prepared,
    split: Manifest,
    keep: set[str],
    lang: str,
    sem: dict[str, list[str]],
    concept_texts: dict[str, str] | None = None,
    encode: SentenceVectors | None = None,
) -> tuple[Annotated, Unannotated, Queries]:
    """Training, pseudo-pair and validation data of one language; with `encode` (texts -> frozen sentence
    embeddings) every sentence, concept sequence (from `concept_texts`) and query also carries its vector."""
    index = prep.store.index()
    tok = tokenizer_for(lang)
    ann = [r for r in split.split("train") if r.id in keep and getattr(r, lang) and r.id in index]
    annotated = Annotated(
        np.array([index[r.id] for r in ann]), [[tok.tokenize(s) for s in getattr(r, lang)] for r in ann]
    )
    un_ids = unannotated_ids(prep, split, keep)
    unannotated = Unannotated(np.array([index[i] for i in un_ids]), [sem.get(i, []) for i in un_ids])
    val_recs = [r for r in split.split("val") if r.id in index and getattr(r, lang)]
    tokens, relevant, texts = [], [], []
    for n, r in enumerate(val_recs):
        for s in getattr(r, lang):
            tokens.append(tok.tokenize(s))
            relevant.append(n)
            texts.append(s)
    val = Queries(tokens, np.array([index[r.id] for r in val_recs]), np.array(relevant))
    if encode is not None:
        annotated.vectors = [encode(list(getattr(r, lang))) for r in ann]
        if concept_texts is not None:
            unannotated.vectors = encode([concept_texts.get(i) or "" for i in un_ids])
        val.vectors = encode(texts)
    return annotated, unannotated, val
