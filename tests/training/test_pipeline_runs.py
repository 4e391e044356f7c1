"""xlsearch-train runs into one runs folder (issue 12 papercuts): the manifest's own split as an option, results of
later runs merged per (variant, seed, split), the served configuration labelled honestly, and only bundles that were
written reported; step labels printed once each."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from xlsearch.data.manifest import read_manifest

FIXTURES = Path(__file__).parent.parent / "fixtures"


@pytest.fixture(scope="module")
def two_variants(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny config with a second variant ("other"); the served one stays "tiny"."""
    cfg = json.loads((FIXTURES / "tiny_config.json").read_text(encoding="utf-8"))
    cfg["variants"]["other"] = {**cfg["variants"]["tiny"], "epochs": 1}
    path = tmp_path_factory.mktemp("config") / "two.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


def _copy_runs(tiny_run, dst: Path) -> Path:
    """The session's tiny runs folder (backbone, feature cache, seed0/tiny, results); its splits point at the data
    by relative paths, so they are made again."""
    shutil.copytree(
        tiny_run.runs,
        dst,
        ignore=shutil.ignore_patterns("index*", "annotated_bundle", "components", "splits"),
    )
    return dst


def _train(tiny_run, runs: Path, config: Path, *extra: str) -> None:
    from xlsearch_training.w2vv.pipeline import main

    argv = ["--data", str(tiny_run.data), "--runs", str(runs), "--seeds", "0", "--config", str(config)]
    assert main([*argv, "--no-progress", *extra]) == 0


@pytest.fixture(scope="module")
def other_only(tiny_run, two_variants, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs folder where only the non-served variant "other" was run (trained once for the module)."""
    runs = _copy_runs(tiny_run, tmp_path_factory.mktemp("other") / "runs")
    (runs / "results.json").unlink()
    shutil.rmtree(runs / "bundle")
    _train(tiny_run, runs, two_variants, "--variants", "other")
    return runs


def test_a_table_without_the_served_variant_does_not_name_another_one_served(other_only):
    table = (other_only / "benchmark.md").read_text(encoding="utf-8")
    assert "Served configuration" not in table
    assert "Detail: other (the served configuration, tiny, is not among these results)" in table
    assert not (other_only / "bundle").exists()


def test_a_second_variants_run_adds_to_the_results_and_keeps_the_served_bundle(
    tiny_run, two_variants, other_only, tmp_path, capsys
):
    runs = _copy_runs(tiny_run, tmp_path / "runs")
    shutil.copytree(
        other_only / "seed0" / "other", runs / "seed0" / "other"
    )  # its result.json: no retraining
    bundle_manifest = (runs / "bundle" / "manifest.json").read_bytes()
    capsys.readouterr()
    _train(tiny_run, runs, two_variants, "--variants", "other")
    out = capsys.readouterr().out

    results = json.loads((runs / "results.json").read_text(encoding="utf-8"))
    assert [(r["variant"], r["seed"]) for r in results] == [("tiny", 0), ("other", 0)]
    table = (runs / "benchmark.md").read_text(encoding="utf-8")
    assert "| tiny |" in table and "| other |" in table
    assert "Served configuration: tiny" in table  # the served variant's detail, from the earlier run
    # the served bundle was not written by this run: untouched on disk and not announced
    assert (runs / "bundle" / "manifest.json").read_bytes() == bundle_manifest
    assert "served bundle: not written ('tiny' was not among the variants run)" in out
    assert f"served bundle: {runs / 'bundle'}" not in out
    # step labels: each once, in order (no "[2/5]" twice)
    assert re.findall(r"^\[(\d)/5\]", out, flags=re.M) == ["1", "2", "3", "4", "5"]

    # running the served variant again replaces its entry, it does not add a second one
    _train(tiny_run, runs, two_variants, "--served-only")
    again = json.loads((runs / "results.json").read_text(encoding="utf-8"))
    assert [(r["variant"], r["seed"]) for r in again] == [("tiny", 0), ("other", 0)]
    out = capsys.readouterr().out
    assert f"served bundle: {runs / 'bundle'} (tiny, seed 0" in out
    assert "already holds this model; attached components kept" in out  # a re-run keeps attached components
    assert (runs / "bundle" / "manifest.json").read_bytes() == bundle_manifest

    # a bundle that differs (here: one model file's recorded hash) is replaced by the served run's
    m = json.loads(bundle_manifest)
    m["files"]["text_encoder_zh.onnx"] = "0" * 64
    (runs / "bundle" / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    _train(tiny_run, runs, two_variants, "--served-only")
    assert "already holds" not in capsys.readouterr().out
    assert (runs / "bundle" / "manifest.json").read_bytes() == bundle_manifest


def test_manifest_split_trains_on_the_manifests_own_split(tiny_run, tmp_path):
    """--split manifest: the data's own split field (here changed from the seeded one), runs kept apart."""
    data = tmp_path / "data"
    shutil.copytree(tiny_run.data, data)
    lines = (data / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    for r in records[:40]:  # 40 images move to test: no seeded 70/15/15 split looks like this
        r["split"] = "test"
    (data / "manifest.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )
    runs = _copy_runs(tiny_run, tmp_path / "runs")
    from xlsearch_training.w2vv.pipeline import main

    argv = ["--data", str(data), "--runs", str(runs), "--seeds", "0", "--split", "manifest", "--no-progress"]
    assert main([*argv, "--config", str(FIXTURES / "tiny_config.json"), "--served-only"]) == 0

    result = json.loads((runs / "manifest-split/seed0/tiny/result.json").read_text(encoding="utf-8"))
    test_images = read_manifest(data).split("test")
    assert result["candidates"] == len(test_images) == sum(r["split"] == "test" for r in records)
    assert result["candidates"] != json.loads((runs / "seed0/tiny/result.json").read_text())["candidates"]
    results = json.loads((runs / "results.json").read_text(encoding="utf-8"))
    assert [(r["variant"], r.get("split", "seeded")) for r in results] == [
        ("tiny", "seeded"),
        ("tiny", "manifest"),
    ]
    table = (runs / "benchmark.md").read_text(encoding="utf-8")
    assert "| tiny (manifest split) |" in table and "Served configuration: tiny (manifest split)" in table
