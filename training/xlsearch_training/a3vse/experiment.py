"""The A3VSE experiment's plan: every (annotated fraction, seed, variant) run in fraction-major order, each skipped
when its ``<runs>/seed<N>/ann<P>/<variant>/result.json`` exists (a re-run resumes); then the report (results.json,
a3vse.md) and the served bundle."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlsearch.data.manifest import Manifest
from xlsearch_training.a3vse.config import A3VSEExperiment, W2VVRun
from xlsearch_training.a3vse.prepare import Prepared, annotated_subset
from xlsearch_training.a3vse.report import format_a3vse_results
from xlsearch_training.a3vse.run import W2VVInputs, run_a3vse, run_w2vv, w2vv_inputs
from xlsearch_training.inputs import seeded_split, slug


@dataclass
class Runner:
    """What every run of one experiment shares; the W2VV baseline's inputs are made when first needed."""

    experiment: A3VSEExperiment
    manifest: Manifest
    prep: Prepared
    runs: Path
    backbone_runs: Path
    sentence_cache: Path
    progress: bool
    w2vv: W2VVInputs | None = None

    def run(self, name: str, fraction: str, seed: int, split: Manifest, keep: set[str]) -> dict[str, Any]:
        out = run_dir(self.runs, seed, fraction, name)
        variant = self.experiment.variant(name)
        spec = self.experiment.sentence_encoder
        if isinstance(variant, W2VVRun):
            self.w2vv = self.w2vv or w2vv_inputs(self.manifest, self.backbone_runs, self.experiment.backbone)
            r = run_w2vv(
                name,
                variant.train,
                self.w2vv,
                split,
                keep,
                seed,
                spec,
                out,
                self.sentence_cache,
                self.progress,
            )
        else:
            r = run_a3vse(
                name, variant.train, self.prep, split, keep, seed, spec, out, self.sentence_cache, self.progress,
                variant.tag_concepts,
            )  # fmt: skip
        return {"variant": name, "seed": seed, "fraction": float(fraction), **r}


def run_plan(
    runner: Runner, data: Path, plan: dict[str, list[str]], seeds: list[int]
) -> list[dict[str, Any]]:
    """Every run of the plan (fraction-major: the sparsest setting, the acceptance check, completes for every seed
    first); finished runs are read back."""
    results: list[dict[str, Any]] = []
    for fraction, names in plan.items():
        for seed in seeds:
            split = seeded_split(data, runner.runs, seed)
            keep = annotated_subset(split, float(fraction), seed)
            for name in names:
                path = run_dir(runner.runs, seed, fraction, name) / "result.json"
                if path.exists():
                    results.append(json.loads(path.read_text()))
                    continue
                r = runner.run(name, fraction, seed, split, keep)
                path.write_text(json.dumps(r, indent=1, ensure_ascii=False))
                results.append(r)
                rows = r["rows"]
                print(
                    f"      seed {seed} ann {fraction} {name}: CM {rows['CM']['mrr']:.3f} "
                    f"val {r['best_val']['zh']['mrr']:.3f} "
                    f"i2t {rows['CM i2t']['mrr']:.3f} CLM[sentence] "
                    f"{rows.get('CLM[sentence]', {}).get('mrr', float('nan')):.3f} ({r['train_seconds']} s)",
                    flush=True,
                )
    return results


def run_dir(runs: Path, seed: int, fraction: str | float, name: str) -> Path:
    return runs / f"seed{seed}" / f"ann{round(float(fraction) * 100)}" / slug(name)


def finished(runs: Path, plan: dict[str, list[str]], seeds: list[int]) -> list[dict[str, Any]]:
    out = []
    for fraction, names in plan.items():
        for seed in seeds:
            for name in names:
                path = run_dir(runs, seed, fraction, name) / "result.json"
                if path.exists():
                    out.append(json.loads(path.read_text()))
    return out


def write_report(
    runs: Path,
    experiment: A3VSEExperiment,
    results: list[dict[str, Any]],
    coverage_zh: dict[str, float] | None,
    pool_size: int | None,
    seeds: list[int] | None = None,
) -> int:
    """results.json, a3vse.md, and the served bundle (the experiment's "serve" at "serve_fraction", first seed)."""
    served = experiment.serve
    if served and seeds:
        src = run_dir(runs, seeds[0], experiment.serve_fraction, served) / "bundle"
        if (src / "manifest.json").exists():
            dst = runs / "bundle"
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(src, dst)
    if coverage_zh is None:  # report-only: read what the preparation cached
        coverage_zh = {
            kind: json.loads(p.read_text(encoding="utf-8"))["coverage_zh"]
            for kind in ("regional", "global")
            if (p := runs / "cache" / f"semantics_{kind}.json").exists()
        }
    if pool_size is None:
        pool_file = runs / "pool" / "manifest.jsonl"
        pool_size = (
            sum(1 for line in pool_file.open(encoding="utf-8") if line.strip()) if pool_file.exists() else 0
        )
    (runs / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    table = format_a3vse_results(results, coverage_zh, pool_size)
    (runs / "a3vse.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0
