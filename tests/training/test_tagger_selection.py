"""The served tagger chosen on validation (`xlsearch_training.tagging.select`, as `make demo` runs it): candidates
are scored on validation F@5 without training the count regressor (F@5 reads the top 5, never the predicted
count), with the same score as a fully trained tagger; the chosen candidate is built with its count regressor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from test_served_only import TINY_TAGGING  # noqa: E402


def test_validation_scores_without_the_count_regressor_and_the_build_keeps_it(
    tiny_run, tmp_path, monkeypatch
):
    from xlsearch.encode.tag_vocab import extract_image_tags
    from xlsearch_training.tagging import select
    from xlsearch_training.tagging.config import TaggingExperiment
    from xlsearch_training.tagging.data import tag_data
    from xlsearch_training.tagging.evaluate import evaluate_modes
    from xlsearch_training.tagging.sources import FeatureSource, open_dataset
    from xlsearch_training.tagging.train import fit_tagger

    config = tmp_path / "tagging.json"
    config.write_text(json.dumps(TINY_TAGGING), encoding="utf-8")
    experiment = TaggingExperiment.load(config)
    manifest = open_dataset(tiny_run.data, None)
    source = FeatureSource(tiny_run.runs, experiment.backbone, experiment.crop)
    features = source(manifest)
    configs = {name: experiment.tagger_config(name, False) for name in experiment.models}
    assert all(c.lqp_epochs == 3 for c in configs.values())

    seen: list[int] = []

    def recording_fit(manifest, features, cfg, seed, tags=None, extra=None):
        seen.append(cfg.lqp_epochs)
        return fit_tagger(manifest, features, cfg, seed, tags, extra)

    monkeypatch.setattr(select, "fit_tagger", recording_fit)
    candidates = select.mlp_candidates(manifest, features, configs, {}, source.input_feature)
    best, scores = select.choose_candidate(candidates)
    assert seen == [0] * len(configs)  # one fit per candidate, none trains the count regressor

    # the score equals the validation F@5 of the same model trained in full (count regressor included)
    tags = extract_image_tags(manifest.records)
    full = fit_tagger(manifest, features, configs[best.name], 0, tags, None)
    assert full.log["count"]["best_epoch"] >= 0
    val = tag_data(manifest.split("val"), features, tags, full.zh_vocab, full.en_vocab)
    assert scores[best.name] == pytest.approx(evaluate_modes(full, val)["k=5"]["f"], abs=1e-9)

    # the chosen one is built with its count regressor trained (the component records its training log)
    spec = json.loads(
        (Path(best.build(tmp_path / "component")) / "component.json").read_text(encoding="utf-8")
    )
    assert spec["model"] == configs[best.name].model
    assert spec["config"]["lqp_epochs"] == 3 and spec["training"]["count"]["best_epoch"] >= 0
