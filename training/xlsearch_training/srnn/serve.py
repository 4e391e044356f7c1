"""The served tagger / captioner of ``xlsearch-train-srnn --bundle``: the row with the best mean validation score
over the seeds among the experiment's candidates (tagging: H-F1 at the model's own tag count, no user tags;
captioning: CIDEr-D of greedy decoding, as the captioning experiment chooses), trained again on the serving split
and written as a component folder that ``xlsearch.bundle.components.attach_component`` attaches.

A multi-scale tagger is a candidate only for a bundle whose image encoder has the same multi-scale output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.bundle.manifest import read_bundle_manifest
from xlsearch.bundle.runtime import Bundle
from xlsearch.data.manifest import Manifest
from xlsearch.encode.tag_vocab import extract_image_tags
from xlsearch_training.captioning.baseline import training_pool
from xlsearch_training.captioning.component import train_captioner_component
from xlsearch_training.captioning.config import CaptionerConfig
from xlsearch_training.captioning.export import write_captioner
from xlsearch_training.multiscale.component import write_multiscale_tagger
from xlsearch_training.srnn.caption_experiment import sentences_of
from xlsearch_training.srnn.caption_train import train_srnn_captioner
from xlsearch_training.srnn.config import SRNNExperiment
from xlsearch_training.srnn.tag_component import write_sequence_tagger
from xlsearch_training.srnn.tag_experiment import (
    NO_USER,
    TaggingInputs,
    config_of,
    fit_row,
    measure,
    model_kinds,
)
from xlsearch_training.tagging.component import write_tagger_component
from xlsearch_training.tagging.data import tag_data


def best_on_validation(
    results: list[dict[str, Any]], key: str, score: str, allowed: list[str]
) -> tuple[str, dict]:
    """(the candidate with the best mean validation ``score``, {candidate: mean}) among ``allowed``."""
    means = {
        name: float(np.mean([r[score] for r in results if r[key] == name]))
        for name in allowed
        if any(r[key] == name for r in results)
    }
    if not means:
        raise ValueError("no candidate has a result to choose from")
    return max(means, key=lambda name: means[name]), means


def bundle_has_multiscale(bundle: Path) -> bool:
    return bool(read_bundle_manifest(bundle, verify=False)["image_encoder"].get("multiscale"))


def serve_tagger(
    experiment: SRNNExperiment,
    results: list[dict[str, Any]],
    manifest: Manifest,
    inputs: TaggingInputs,
    input_feature: dict[str, Any],
    ms_feature: dict[str, Any],
    out: Path,
    multiscale_ok: bool,
    seed: int = 0,
) -> tuple[Path, dict[str, Any]]:
    """Train the tagging row chosen on validation on ``manifest``'s own split and write its component to ``out``."""
    kinds = model_kinds(experiment)
    allowed = [
        n for n in kinds if multiscale_ok or kinds[n] != "multiscale" or not _reads_stages(experiment, n)
    ]
    name, means = best_on_validation(results, "model", "val_h_f1", allowed)
    kind = kinds[name]
    cfg = config_of(experiment, name, kind)
    tags = extract_image_tags(manifest.records)
    trained = fit_row(kind, manifest, inputs, cfg, seed, tags)
    feats = inputs.multiscale if kind == "multiscale" else inputs.features
    test = tag_data(manifest.split("test"), feats, tags, trained.zh_vocab, trained.en_vocab)
    test = test.subset(test.zh_tagged)
    metrics: dict[str, Any] = {}
    if len(test.ids):
        metrics = {
            "split": "test",
            "images": len(test.ids),
            NO_USER: measure(kind, trained, test.x, test.zh, None),
        }
    parity = test.x[:4] if len(test.ids) else None
    chosen = {
        "chosen": name,
        "kind": kind,
        "by": "mean validation H-F1 over the experiment's seeds",
        "means": means,
    }
    if kind == "baseline":
        write_tagger_component(trained, out, input_feature, {**metrics, "selection": chosen}, parity)
    elif kind == "srnn":
        write_sequence_tagger(trained, out, input_feature, {**metrics, "selection": chosen}, parity)
    else:
        write_multiscale_tagger(trained, out, ms_feature, {**metrics, "selection": chosen}, parity)
    return out, chosen


def _reads_stages(experiment: SRNNExperiment, name: str) -> bool:
    return experiment.multiscale_config(name).multi_scale


def serve_captioner(
    experiment: SRNNExperiment,
    results: list[dict[str, Any]],
    split: Manifest,
    features: dict[str, np.ndarray],
    input_feature: dict[str, Any],
    caption_cfg: CaptionerConfig,
    bundle: Bundle,
    out: Path,
    seed: int,
) -> tuple[Path, dict[str, Any]]:
    """Train the captioning row chosen on validation (an S-CNN-RNN variant or a Show-and-Tell strategy) on
    ``split`` and write its component to ``out``."""
    candidates = [*experiment.captioning.baseline_strategies, *experiment.captioning.models]
    name, means = best_on_validation(results, "strategy", "val_cider", candidates)
    chosen = {
        "chosen": name,
        "by": "mean validation CIDEr-D (greedy) over the experiment's seeds",
        "means": means,
    }
    if name not in experiment.captioning.models:
        train_captioner_component(split, features, out, caption_cfg, input_feature, seed, bundle, name)
        return out, chosen
    cfg = experiment.captioner_config(name)
    data = sentences_of(split, features)
    trained, info = train_srnn_captioner(data, split, cfg, seed, name)
    test = sorted(data.zh["test"])
    parity = np.stack([features[i] for i in test]) if test else None
    extra = {"model": "s-cnn-rnn", "seed": seed, "dataset": str(split.root), **info, "selection": chosen}
    write_captioner(trained, out, cfg, input_feature, training_pool(split), extra, parity)  # type: ignore[arg-type]
    return out, chosen
