"""The tagging experiment of ``xlsearch-train-srnn tagging`` on one seeded split: every row of the table trained on
the split's train images (val picks the epochs) and measured on its tagged test images, without and (for models
with a user-tag input) with simulated user tags. Kinds of rows:

- ``baseline``: the Cascading MLP + label-quantity prediction of ``xlsearch_training.tagging`` (the served tagger);
- ``srnn``: S-CNN-RNN tag sequences (``srnn.tag_train``);
- ``multiscale``: Niu et al.'s single- / multi-scale taggers with and without the textual vector.

Each result is cached as ``<runs>/seed<N>/<model>/result.json`` (reused while its config is unchanged).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.data.manifest import Manifest
from xlsearch.encode.tag_vocab import ImageTags, extract_image_tags
from xlsearch_training.inputs import slug
from xlsearch_training.multiscale.train import fit_multiscale
from xlsearch_training.srnn.config import SRNNExperiment
from xlsearch_training.srnn.evaluate import score_metrics, sequence_metrics, set_metrics, simulated_user_tags
from xlsearch_training.srnn.fit import log_summary
from xlsearch_training.srnn.tag_train import fit_sequence_tagger
from xlsearch_training.tagging.data import tag_data
from xlsearch_training.tagging.train import fit_tagger

NO_USER, USER = "no user tags", "user tags"


@dataclass
class TaggingInputs:
    features: dict[str, np.ndarray]  # image id -> backbone feature (the ordinary cache)
    multiscale: dict[str, np.ndarray]  # image id -> [feature ; stages] (the multi-scale cache)
    stage_dims: list[int]
    dim: int


def model_kinds(experiment: SRNNExperiment) -> dict[str, str]:
    """Every row's name -> its kind, in table order."""
    t = experiment.tagging
    return {
        **{name: "baseline" for name in t.baseline},
        **{name: "srnn" for name in t.models},
        **{name: "multiscale" for name in t.multiscale},
    }


def config_of(experiment: SRNNExperiment, name: str, kind: str, progress: bool = False) -> Any:
    if kind == "baseline":
        return experiment.baseline_config(name, progress)
    if kind == "srnn":
        return experiment.tagger_config(name, progress)
    return experiment.multiscale_config(name, progress)


def fit_row(kind: str, split: Manifest, inputs: TaggingInputs, cfg: Any, seed: int, tags: ImageTags) -> Any:
    """The trained model of one row."""
    if kind == "baseline":
        return fit_tagger(split, inputs.features, cfg, seed, tags)
    if kind == "srnn":
        return fit_sequence_tagger(split, inputs.features, cfg, seed, tags)
    return fit_multiscale(split, inputs.multiscale, cfg, seed, inputs.dim, inputs.stage_dims, tags)


def uses_user_tags(kind: str, cfg: Any) -> bool:
    return bool(cfg.textual if kind == "multiscale" else cfg.user_tags)


def measure(
    kind: str, trained: Any, x: np.ndarray, truth: np.ndarray, user: np.ndarray | None
) -> dict[str, Any]:
    """``@5`` / ``own`` metrics of a trained row on images ``x`` with multi-hot ``truth`` (and user tags)."""
    truth = truth > 0
    if kind == "srnn":
        own, _ = trained.decode(x, user=user)
        five, _ = trained.decode(x, k=5, user=user)
        return sequence_metrics(own, five, truth)
    if kind == "baseline" and user is None and trained.config.user_tags:
        user = np.zeros(truth.shape, np.float32)
    scores, counts = trained.scores(x, user)
    return score_metrics(scores, counts, truth)


def validation_h_f1(kind: str, trained: Any, x: np.ndarray, truth: np.ndarray) -> float:
    """H-F1 of the model's own tag count on the tagged validation images, no user tags: what the served tagger is
    chosen by (the only metric defined for both tag sets and tag scores)."""
    if not len(x):
        return 0.0
    if kind == "srnn":
        return set_metrics(trained.decode(x)[0], truth > 0)["h_f1"]
    return measure(kind, trained, x, truth, None)["own"]["h_f1"]


def run_row(
    name: str,
    kind: str,
    cfg: Any,
    split: Manifest,
    inputs: TaggingInputs,
    seed: int,
    out: Path,
    experiment: SRNNExperiment,
    tags: ImageTags | None = None,
) -> dict[str, Any]:
    path = out / "result.json"
    settings = {k: v for k, v in cfg.to_dict().items() if k != "progress"}
    if path.exists():
        done = json.loads(path.read_text(encoding="utf-8"))
        if done.get("config") == settings:
            return done
        print(f"      {path}: trained with another config; retraining")
    start = time.time()
    tags = tags or extract_image_tags(split.records)
    trained = fit_row(kind, split, inputs, cfg, seed, tags)
    feats = inputs.multiscale if kind == "multiscale" else inputs.features
    test = tag_data(split.split("test"), feats, tags, trained.zh_vocab, trained.en_vocab)
    test = test.subset(test.zh_tagged)
    val = tag_data(split.split("val"), feats, tags, trained.zh_vocab, trained.en_vocab)
    val = val.subset(val.zh_tagged)
    result: dict[str, Any] = {
        "model": name,
        "kind": kind,
        "seed": seed,
        "config": settings,
        "test_images": len(test.ids),
        "train_seconds": round(time.time() - start, 1),
        "val_h_f1": validation_h_f1(kind, trained, val.x, val.zh),
        "test": {NO_USER: measure(kind, trained, test.x, test.zh, None)},
        "training": log_summary(trained.log),
    }
    if uses_user_tags(kind, cfg):
        t = experiment.tagging
        user = simulated_user_tags(test.zh, t.test_user_tag_keep, t.test_user_tag_seed + seed)
        result["test"][USER] = measure(kind, trained, test.x, test.zh, user)
        result["test_user_tags_per_image"] = float(user.sum(axis=1).mean())
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    return result


def run_split(
    split: Manifest,
    inputs: TaggingInputs,
    experiment: SRNNExperiment,
    seed: int,
    runs: Path,
    names: list[str],
    progress: bool,
) -> list[dict[str, Any]]:
    kinds = model_kinds(experiment)
    tags = extract_image_tags(split.records)
    results = []
    for name in names:
        cfg = config_of(experiment, name, kinds[name], progress)
        r = run_row(
            name, kinds[name], cfg, split, inputs, seed, runs / f"seed{seed}" / slug(name), experiment, tags
        )
        own = r["test"][NO_USER]["own"]
        print(
            f"seed {seed} {name}: F@5 {r['test'][NO_USER]['@5']['f']:.3f}  H-F1 {own['h_f1']:.3f} "
            f"(val {r['val_h_f1']:.3f})  tags {own['mean_k']:.2f}/{r['test'][NO_USER]['true_k']:.2f}  "
            f"({r['train_seconds']} s)"
        )
        results.append(r)
    return results
