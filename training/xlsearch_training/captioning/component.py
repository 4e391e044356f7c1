"""The served captioner: one strategy trained on a manifest's train split, measured on its test split (and against
the recommendation baseline when a bundle is given), written as a component folder (``export.write_captioner``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.bundle.runtime import Bundle
from xlsearch.data.manifest import Manifest
from xlsearch.eval.caption_metrics import score_captions
from xlsearch_training.captioning.baseline import recommend_for, training_pool
from xlsearch_training.captioning.config import STRATEGIES, CaptionerConfig
from xlsearch_training.captioning.export import write_captioner
from xlsearch_training.captioning.inputs import split_data
from xlsearch_training.captioning.train import generate_for, train_strategy


def train_captioner_component(
    manifest: Manifest,
    features: dict[str, np.ndarray],
    out_dir: Path,
    config: CaptionerConfig,
    input_feature: dict,
    seed: int,
    bundle: Bundle | None = None,
    strategy: str | None = None,
) -> Path:
    """Train one captioner on ``manifest`` (strategy: ``strategy``, else ``config.serve``; "best" means monolingual
    here — the experiment CLI resolves "best" from its results), measure it on the test split (and the
    recommendation baseline when a ``bundle`` is given) and write the component folder ``out_dir``."""
    strategy = strategy or (config.serve if config.serve in STRATEGIES else "monolingual")
    out_dir = Path(out_dir)
    data = split_data(
        manifest,
        features,
        config,
        [strategy],
        None,
        out_dir.parent / f".{out_dir.name}-work",
        input_feature,
        seed,
    )
    t0 = time.time()
    trained = train_strategy(strategy, data, config, seed)
    extra: dict[str, Any] = {
        "seed": seed,
        "dataset": str(manifest.root),
        "train_seconds": round(time.time() - t0),
    }
    test = data.zh["test"]
    if test:
        ids = sorted(test)
        extra["test_metrics"] = score_captions(test, generate_for(trained, ids, features, config))
        if bundle is not None:
            recs = recommend_for(bundle, manifest, ids, k=1)
            extra["nn_test_metrics"] = score_captions(test, {i: recs[i][0][0] for i in ids})
    out_dir.mkdir(parents=True, exist_ok=True)
    parity = np.stack([features[i] for i in sorted(test)]) if test else None
    write_captioner(trained, out_dir, config, input_feature, training_pool(manifest), extra, parity)
    return out_dir
