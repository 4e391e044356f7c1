"""Choosing the served tagger on validation among candidate strategies, instead of by name.

A `Candidate` is any tagging strategy: a name, ``validate()`` (train on the manifest's train split, return the
validation score, higher is better) and ``build(folder)`` (train the servable component into ``folder``). The MLP
family of `xlsearch_training.tagging` gives one candidate per model of the experiment file (`mlp_candidates`);
other strategies join by adding their own `Candidate` to the list: `sequence_candidates` gives one per S-CNN-RNN
model of the ``xlsearch-train-srnn`` experiment file (label sequences, F@5 = five labels decoded, end token masked).

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
from xlsearch_training.config import CONFIG_DIR
from xlsearch_training.tagging.component import train_tagger_component
from xlsearch_training.tagging.config import TaggerConfig
from xlsearch_training.tagging.data import tag_data
from xlsearch_training.tagging.evaluate import evaluate_modes
from xlsearch_training.tagging.train import fit_tagger

__all__ = ["VAL_METRIC", "Candidate", "choose_candidate", "mlp_candidates", "sequence_candidates"]

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
    """Train on the train split (val picks the epochs), F@5 over the validation images with a vocabulary tag.
    The score reads the top 5, never the predicted count: the count regressor (LQP) is not trained here (it
    trains after the tag model, so the tag model and the score are the same as with it)."""
    cfg = replace(cfg, lqp_epochs=0)
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


def sequence_candidates(
    manifest: Manifest,
    features: dict[str, np.ndarray],
    input_feature: dict[str, Any],
    seed: int = 0,
    experiment: Path | None = None,
    names: Sequence[str] | None = None,
) -> list[Candidate]:
    """One candidate per S-CNN-RNN tagger of ``experiment`` (default: configs/srnn_tuxpaint.json; ``names``: a
    subset), validated like the MLPs (F@5 on the tagged validation images) and built as a sequence-tagger component
    the bundle serves through the same Tag RPC."""
    from xlsearch_training.srnn.config import SRNNExperiment
    from xlsearch_training.srnn.evaluate import set_metrics
    from xlsearch_training.srnn.tag_component import write_sequence_tagger
    from xlsearch_training.srnn.tag_train import fit_sequence_tagger

    experiment = experiment or CONFIG_DIR / "srnn_tuxpaint.json"
    exp = SRNNExperiment.load(experiment)
    tags = extract_image_tags(manifest.records)
    trained: dict[str, Any] = {}

    def fit(name: str) -> Any:
        if name not in trained:
            trained[name] = fit_sequence_tagger(manifest, features, exp.tagger_config(name), seed, tags)
        return trained[name]

    def validate(name: str) -> float:
        model = fit(name)
        val = tag_data(manifest.split("val"), features, tags, model.zh_vocab, model.en_vocab)
        val = val.subset(val.zh_tagged)
        if not val.ids:
            return float("-inf")
        return float(set_metrics(model.decode(val.x, k=5)[0], val.zh > 0)["f"])

    def build(folder: Path, name: str) -> Path:
        model = fit(name)  # the model validate() scored, trained once
        test = tag_data(manifest.split("test"), features, tags, model.zh_vocab, model.en_vocab)
        parity = test.x[:4] if len(test.ids) else None
        return write_sequence_tagger(
            model, folder, input_feature, {"selection": {"chosen": name, "by": VAL_METRIC}}, parity
        )

    chosen = list(names) if names is not None else list(exp.tagging.models)
    return [
        Candidate(
            n,
            lambda n=n: validate(n),
            lambda folder, n=n: build(folder, n),
            {"config": exp.tagger_config(n).to_dict(), "experiment": str(experiment)},
        )
        for n in chosen
    ]
