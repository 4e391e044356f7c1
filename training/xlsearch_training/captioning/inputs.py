"""What one seeded split offers the captioning strategies (``SplitData``: features, sentences per split, corpus A
of Sequential Learning, tag inputs) and ``split_data``, which gathers it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xlsearch.data.manifest import Manifest
from xlsearch_training.captioning.config import CaptionerConfig
from xlsearch_training.captioning.corpora import Sentences, manifest_sentences
from xlsearch_training.captioning.tags import TagInputs


@dataclass
class SplitData:
    """Everything one seeded split offers the strategies. Sentences are raw (segmented where needed)."""

    features: dict[str, np.ndarray]  # image id -> backbone vector
    zh: dict[str, Sentences]  # split -> image id -> Chinese sentences
    en: dict[str, Sentences]
    corpus_a: Sentences | None = None  # Sequential Learning corpus A (training images only)
    tags: TagInputs | None = None


def split_data(
    manifest: Manifest,
    features: dict[str, np.ndarray],
    cfg: CaptionerConfig,
    strategies: list[str],
    corpus_a: Sentences | None = None,
    work_dir: Path | None = None,
    input_feature: dict | None = None,
    seed: int = 0,
) -> SplitData:
    """The strategies' inputs for one split; ``corpus_a``: Sequential Learning's corpus A (restricted here to the
    training images); the tagger (tag strategy) is trained into ``work_dir/tagger``."""
    data = SplitData(
        features,
        {s: manifest_sentences(manifest, s, "zh") for s in ("train", "val", "test")},
        {s: manifest_sentences(manifest, s, "en") for s in ("train", "val", "test")},
    )
    if "sequential" in strategies and corpus_a:
        train_ids = {r.id for r in manifest.split("train")}
        data.corpus_a = {k: v for k, v in corpus_a.items() if k in train_ids} or None
    if "tags" in strategies:
        use_tagger = cfg.tag_predictor == "tagger"
        if use_tagger and work_dir is None:
            raise ValueError("tag_predictor 'tagger' needs a work_dir to train the tagger in")
        data.tags = TagInputs.build(
            manifest,
            features,
            cfg.tag_min_count,
            cfg.tag_neighbours,
            tagger_folder=work_dir / "tagger" if use_tagger and work_dir is not None else None,
            tagger_overrides=cfg.tagger,
            input_feature=input_feature,
            seed=seed,
        )
    return data
