"""`xlsearch fusion-study` (issue 13, item 4) on the session's tiny trained run: every fixed choice and every rule
scored on the test split from the same validation / test scores as the benchmark, the served row equal to what
`xlsearch.eval.benchmark.evaluate` serves, and a re-run reusing the recorded seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xlsearch.bundle.manifest import load_bundle_manifest
from xlsearch.bundle.runtime import Bundle
from xlsearch.data.manifest import read_manifest
from xlsearch.encode.features import extract_features
from xlsearch.eval.benchmark import build_query_set, score
from xlsearch.eval.fusion_study import BASE, CHOICES, SERVED, main, split_table, study_table
from xlsearch.eval.metrics import retrieval_metrics


def test_fusion_study_scores_every_choice_and_matches_the_served_fusion(
    tiny_run, tmp_path: Path, capsys
) -> None:
    from xlsearch_cli.main import main as xlsearch

    out = tmp_path / "study.json"
    argv = [
        "--runs",
        str(tiny_run.runs),
        "--variant",
        "tiny",
        "--seeds",
        "0",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert xlsearch(["fusion-study", *argv]) == 0
    first = capsys.readouterr().out
    assert "(scored)" in first and "| **" + SERVED + "** |" in first and "| seed 0 |" in first
    (seed,) = json.loads(out.read_text(encoding="utf-8"))
    rows = seed["rows"]
    assert set(rows) == set(CHOICES)

    bundle_dir = tiny_run.runs / "seed0" / "tiny" / "bundle"
    bundle = Bundle(bundle_dir)
    manifest = read_manifest(tiny_run.runs / "splits" / "seed0")
    ids, feats, _ = extract_features(
        manifest,
        bundle_dir / "image_encoder.onnx",
        bundle.preprocess_config,
        tiny_run.runs / "cache" / "features",
        progress=False,
    )
    vectors = dict(zip(ids, feats, strict=True))
    test_qs = build_query_set(manifest.split("test"))
    test = score(bundle, test_qs, vectors)
    assert seed["test_queries"] == len(test_qs.queries) > 10
    # fixed choices are the plain test metrics; CM is alpha 0
    assert rows[BASE]["mrr"] == pytest.approx(retrieval_metrics(test.cl_sentence, test_qs.relevant)["mrr"])
    assert rows["CM"]["mrr"] == pytest.approx(retrieval_metrics(test.cm, test_qs.relevant)["mrr"])
    assert rows["CL visual"]["mrr"] == pytest.approx(
        retrieval_metrics(test.cl_visual, test_qs.relevant)["mrr"]
    )
    # the served row is what the training pipeline chose (xlsearch.eval.benchmark.evaluate) and wrote into the
    # bundle manifest, and its test MRR is the benchmark's "CLM served" row recorded beside the bundle
    fusion = load_bundle_manifest(bundle_dir).to_dict()["fusion"]
    assert fusion["rule"] == "simplex 1se" and rows[SERVED]["weights"] == pytest.approx(
        fusion["simplex_weights"]
    )
    recorded = json.loads((bundle_dir.parent / "result.json").read_text(encoding="utf-8"))["rows"][
        "CLM served"
    ]
    assert rows[SERVED]["mrr"] == pytest.approx(recorded["mrr"])
    w = rows[SERVED]["weights"]
    assert sum(w) == pytest.approx(1.0) and min(w) >= 0
    want = w[0] * test.cl_visual + w[1] * test.cl_sentence + w[2] * test.cm
    assert rows[SERVED]["mrr"] == pytest.approx(retrieval_metrics(want, test_qs.relevant)["mrr"])

    # a re-run reuses the recorded seed (same bundle hash) and prints the same tables
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert "(kept)" in again and study_table([seed]) in again and split_table([seed]) in again


def test_study_table_counts_the_seeds_over_the_bar() -> None:
    def seed(k: int, base: float, served: float) -> dict:
        rows = {c: {"mrr": base, "space": "sentence", "alpha": 1.0} for c in CHOICES}
        rows[SERVED] = {"mrr": served, "space": "joint", "alpha": 1.0, "weights": [0.3, 0.7, 0.0]}
        return {"seed": k, "rows": rows}

    per_seed = [seed(0, 0.70, 0.76), seed(1, 0.70, 0.72), seed(2, 0.60, 0.65)]
    table = study_table(per_seed)
    line = next(x for x in table.splitlines() if SERVED in x)
    gains = np.array([0.06, 0.02, 0.05])
    assert f"+{gains.mean():.3f}" in line and "2 of 3" in line  # +0.05 counts (float tolerance)
    assert "| seed 1 |" in split_table(per_seed) and "+0.020" in split_table(per_seed)
