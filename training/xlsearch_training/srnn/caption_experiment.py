"""The captioning experiment of ``xlsearch-train-srnn captioning`` on one seeded split: every S-CNN-RNN variant
trained and scored on the test split (beam 3), beside the Show-and-Tell strategies of ``xlsearch_training.captioning``
(the served captioner's family) and the nearest-neighbour sentence recommendation baseline, whose runs and result
files are the captioning experiment's own. Each result is cached as ``<runs>/seed<N>/<model>/result.json``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.data.manifest import Manifest
from xlsearch.eval.caption_metrics import score_captions
from xlsearch_training.captioning.corpora import manifest_sentences
from xlsearch_training.captioning.experiment import exact_match
from xlsearch_training.captioning.inputs import SplitData
from xlsearch_training.captioning.train import generate_for
from xlsearch_training.inputs import slug
from xlsearch_training.srnn.caption_train import train_srnn_captioner
from xlsearch_training.srnn.config import SRNNCaptionerConfig

DROPS = ("history", "sentences")  # kept in each result.json only


def sentences_of(split: Manifest, features: dict[str, np.ndarray]) -> SplitData:
    return SplitData(
        features,
        {s: manifest_sentences(split, s, "zh") for s in ("train", "val", "test")},
        {s: manifest_sentences(split, s, "en") for s in ("train", "val", "test")},
    )


def run_model(
    name: str,
    cfg: SRNNCaptionerConfig,
    split: Manifest,
    features: dict[str, np.ndarray],
    seed: int,
    runs: Path,
) -> dict[str, Any]:
    """One S-CNN-RNN variant's result on this split, read from its result.json (same config) or trained."""
    path = runs / f"seed{seed}" / slug(name) / "result.json"
    settings = {k: v for k, v in cfg.to_dict().items() if k != "progress"}
    if path.exists():
        done = json.loads(path.read_text(encoding="utf-8"))
        if done.get("config") == settings:
            return done
        print(f"      {path}: trained with another config; retraining")
    t0 = time.time()
    data = sentences_of(split, features)
    trained, info = train_srnn_captioner(data, split, cfg, seed, name)
    test = data.zh["test"]
    ids = sorted(test)
    sentences = generate_for(trained, ids, features, cfg)  # type: ignore[arg-type]  # the fields it reads
    result = {
        "strategy": name,
        "seed": seed,
        "config": settings,
        "val_cider": trained.val_cider,
        "test": score_captions(test, sentences),
        "exact_match": exact_match(test, sentences),
        "train_seconds": round(time.time() - t0, 1),
        "vocab_size": len(trained.vocab),
        **info,
        "history": trained.history,
        "sentences": sentences,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    print(
        f"      seed {seed} {name}: CIDEr-D {100 * result['test']['CIDEr-D']:.1f} "
        f"(val {100 * result['val_cider']:.1f}, {result['train_seconds']} s)"
    )
    return result


def summary(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in r.items() if k not in (*DROPS, "recommendations", "test_tags")} for r in results
    ]
