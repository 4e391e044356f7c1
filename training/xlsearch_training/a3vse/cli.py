"""Sparse-annotation experiment (A3VSE paper, Tables 1 and 5, at Tux Paint scale), `xlsearch-train-a3vse`.

For each seeded split and each annotated fraction of the training images (the rest of them become un-annotated,
plus an extra un-annotated pool), train the configured variants (Enhanced W2VV on the annotated subset only; A3VSE
without semantics / with global semantics / full / without one adversarial group), write a bundle per run, and
benchmark it with `xlsearch.eval.benchmark.evaluate` (CM, CL, CLM; R@1/5/10 and MRR in both directions). Every run is
skipped when its result.json exists, so a re-run resumes.

    xlsearch-train-a3vse --data data/tuxpaint --runs runs/a3vse --seeds 0,1,2 --backbone-runs runs/demo
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from xlsearch_training.a3vse.config import DEFAULT_CONFIG, A3VSEExperiment
from xlsearch_training.a3vse.experiment import Runner, finished, run_plan, write_report
from xlsearch_training.a3vse.prepare import prepare
from xlsearch_training.inputs import ensure_dataset, parse_seeds

__all__ = ["DEFAULT_CONFIG", "main"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", default="data/tuxpaint", help="annotated dataset manifest (Tux Paint built if absent)"
    )
    ap.add_argument("--runs", default="runs/a3vse", help="output folder")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--fractions", help="comma-separated subset of the config's fractions (e.g. 0.2)")
    ap.add_argument("--variants", help="comma-separated subset of the config's variants")
    ap.add_argument(
        "--pool-cap", type=int, help="at most this many extra un-annotated images (config: pool.cap)"
    )
    ap.add_argument(
        "--backbone-runs",
        help="folder whose backbone ONNX + feature cache the W2VV baseline reuses (default: --runs)",
    )
    ap.add_argument(
        "--cache-root",
        help="folder for the pool, region cache and semantics (default: --runs; share it between runs)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="write the table from the runs finished so far; train nothing",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    progress = not args.no_progress

    experiment = A3VSEExperiment.load(args.config)
    data, runs = Path(args.data), Path(args.runs)
    backbone_runs = Path(args.backbone_runs) if args.backbone_runs else runs
    seeds = parse_seeds(args.seeds)
    plan: dict[str, list[str]] = experiment.fractions
    if args.fractions:
        wanted = {float(f) for f in args.fractions.split(",")}
        plan = {f: v for f, v in plan.items() if float(f) in wanted}
    if args.variants:
        wanted_v = {v.strip() for v in args.variants.split(",")}
        plan = {f: [v for v in vs if v in wanted_v] for f, vs in plan.items()}
    cache_root = Path(args.cache_root) if args.cache_root else runs
    sentence_cache = cache_root / "cache" / "sentences"

    if args.report_only:
        return write_report(runs, experiment, finished(runs, plan, seeds), None, None, seeds)
    manifest = ensure_dataset(data, None)
    print("[2/4] regions, un-annotated pool, semantics")
    prep = prepare(manifest, cache_root, experiment, args.pool_cap, progress)
    print(f"      regions {prep.store.regions.shape}, zh concept coverage {prep.coverage_zh}")
    print(f"[3/4] training: seeds {seeds}, plan {plan}")
    runner = Runner(experiment, manifest, prep, runs, backbone_runs, sentence_cache, progress)
    results = run_plan(runner, data, plan, seeds)
    print("[4/4] report")
    return write_report(runs, experiment, results, prep.coverage_zh, len(prep.pool_ids), seeds)


if __name__ == "__main__":
    raise SystemExit(main())
