"""Choosing the served tagger on validation among candidate strategies, instead of by name.

A `Candidate` is any tagging strategy: a name, ``validate()`` (train on the manifest's train split, return the
validation score, higher is better) and ``build(folder)`` (train the servable component into ``folder``). The MLP
family of `xlsearch_training.tagging` gives one candidate per model of the experiment file (`mlp_candidates`);
other strategies (e.g. a label-sequence tagger) join by adding their own `Candidate` to the list.

`choose_candidate` validates every candidate and keeps the best; a tie goes to the earlier (simpler) one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.data.manifest import Manifest
from xlsearch.encode.tag_vocab import extract_image_tags
from xlsearch_training.tagging.component import train_tagger_component
from xlsearch_training.tagging.config import TaggerConfig
from xlsearch_training.tagging.data import tag_data
from xlsearch_training.tagging.evaluate import evaluate_modes
from xlsearch_training.tagging.train import fit_tagger

__all__ = ["VAL_METRIC", "Candidate", "choose_candidate", "mlp_candidates"]

VAL_METRIC = "validation F@5"


@dataclass
class Candidate:
    name: str
    validate: Callable[[], float]
    build: Callable[[Path], Path]
    info: dict[str, Any] | None = None


def choose_candidate(candidates: Sequence[Candidate]) -> tuple[Candidate, dict[str, float]]:
    """(the best candidate on validation, every candidate's score)."""
    if not candidates:
        raise ValueError("no tagging strategy to choose from")
    scores = {c.name: float(c.validate()) for c in candidates}
    best = max(candidates, key=lambda c: (scores[c.name], -candidates.index(c)))
    return best, scores


def _val_f5(
    manifest: Manifest, features: dict[str, np.ndarray], cfg: TaggerConfig, seed: int, extra: dict | None
) -> float:
    """Train on the train split (val picks the epochs), F@5 over the validation images with a vocabulary tag."""
    tags = extract_image_tags(manifest.records)
    trained = fit_tagger(manifest, features, cfg, seed, tags, extra)
    val = tag_data(manifest.split("val"), features, tags, trained.zh_vocab, trained.en_vocab)
    if not val.zh_tagged.any():
        return float("-inf")
    return float(evaluate_modes(trained, val)["k=5"]["f"])


def mlp_candidates(
    manifest: Manifest,
    features: dict[str, np.ndarray],
    configs: dict[str, TaggerConfig],
    serve_options: dict[str, Any],
    input_feature: dict[str, Any],
    seed: int = 0,
    extra_english: dict[str, list[str]] | None = None,
) -> list[Candidate]:
    """One candidate per model config; the served one gets ``serve_options`` (e.g. user-tag input) on top."""
    out = []
    for name, cfg in configs.items():
        served = replace(cfg, **serve_options)

        def validate(cfg: TaggerConfig = cfg) -> float:
            return _val_f5(manifest, features, cfg, seed, extra_english)

        def build(folder: Path, served: TaggerConfig = served) -> Path:
            return train_tagger_component(
                manifest, features, folder, served, input_feature, seed=seed, extra_english=extra_english
            )

        out.append(Candidate(name, validate, build, {"config": served.to_dict()}))
    return out
