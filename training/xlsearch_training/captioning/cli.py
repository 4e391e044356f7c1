"""Chinese captioning experiment: every strategy on every seeded split, scored against the nearest-neighbour
sentence recommendation baseline; optionally trains the served captioner and attaches it to a bundle.

    xlsearch-train-captioner --data data/tuxpaint --retrieval-runs runs/demo --runs runs/captioning --seeds 0,1,2,3,4

The retrieval run (``--retrieval-runs``) provides the backbone, the feature cache, the seeded splits and, per seed,
the served retrieval variant's bundle (the baseline's text encoder); a missing bundle is trained with the retrieval
pipeline. With a zero-training ``--bundle`` (``xlsearch bundle pretrained``) and no ``--features-from``, the features
and the baseline's text encoder are that bundle's. Results are resumable per seed and strategy
(``<runs>/seed<N>/<strategy>/result.json``).

Sequential Learning's corpus A comes only from ``--corpus-a`` (``tuxpaint``: the stamps' zh_TW lines under
``--stamps-root``; or a JSON file {image id: [sentences]}); without it the strategy is skipped with a message. The
served captioner is the strategy with the best validation CIDEr-D (config ``serve: "best"``) unless the config names
one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from xlsearch.bundle.runtime import Bundle
from xlsearch.common import progress
from xlsearch_training.captioning.component import train_captioner_component
from xlsearch_training.captioning.config import STRATEGIES, CaptionerConfig
from xlsearch_training.captioning.corpora import load_corpus_a
from xlsearch_training.captioning.experiment import (
    run_baseline,
    run_strategies,
    served_strategy,
    write_seed_gallery,
)
from xlsearch_training.captioning.report import format_table
from xlsearch_training.config import CONFIG_DIR
from xlsearch_training.inputs import ensure_backbone, parse_seeds, seeded_split
from xlsearch_training.tagging.sources import DEFAULT_DATA, FeatureSource, open_dataset
from xlsearch_training.w2vv.config import RetrievalExperiment

DEFAULT_CONFIG = CONFIG_DIR / "captioning_tuxpaint.json"
RETRIEVAL_CONFIG = CONFIG_DIR / "tuxpaint.json"
SUMMARY_DROPS = ("history", "sentences", "recommendations", "test_tags")  # kept in each result.json only


def dataset_name(data: Path) -> str:
    """What the table and the gallery call the data: its folder's name (``tuxpaint`` for data/tuxpaint)."""
    return Path(data).resolve().name


def recorded_results(runs: Path, seeds: list[int], strategies: list[str]) -> list[dict[str, Any]]:
    """The strategies' result.json files already in ``runs`` for these seeds (nothing is trained)."""
    paths = [runs / f"seed{seed}" / s / "result.json" for seed in seeds for s in strategies]
    return [json.loads(p.read_text(encoding="utf-8")) for p in paths if p.is_file()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", default=str(DEFAULT_DATA), help="dataset manifest folder (data/tuxpaint is built if absent)"
    )
    ap.add_argument("--runs", default="runs/captioning", help="output folder")
    ap.add_argument(
        "--retrieval-runs", default="runs/demo", help="retrieval run: backbone, cache, splits, bundles"
    )
    ap.add_argument("--retrieval-config", default=str(RETRIEVAL_CONFIG), help="retrieval experiment JSON")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="captioner config JSON")
    ap.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated split seeds")
    ap.add_argument("--strategies", help=f"comma-separated subset of {','.join(STRATEGIES)}")
    ap.add_argument(
        "--corpus-a",
        help="Sequential Learning's corpus A: 'tuxpaint' (zh_TW descriptions) or a JSON {id: [sentences]}",
    )
    ap.add_argument(
        "--stamps-root", help="Tux Paint stamps folder (for --corpus-a tuxpaint / building data/tuxpaint)"
    )
    ap.add_argument(
        "--features-from",
        help="retrieval run whose backbone + feature cache to use (default --retrieval-runs)",
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip the NN recommendation baseline")
    ap.add_argument(
        "--gallery", type=int, default=40, help="test images in the gallery of the first seed (0: none)"
    )
    ap.add_argument("--bundle", help="train the served captioner and attach it to this bundle folder")
    ap.add_argument(
        "--served-only",
        action="store_true",
        help="with --bundle: train only the served captioner on the first seed's split, no experiment table "
        "(config 'best' then picks among the strategies' results already in --runs)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars or progress lines")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.no_progress:
        progress.set_enabled(False)
    if args.served_only and not args.bundle:
        ap.error("--served-only trains the served captioner of a --bundle: give --bundle")

    cfg = CaptionerConfig.load(args.config)
    strategies = [s.strip() for s in args.strategies.split(",")] if args.strategies else list(cfg.strategies)
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        ap.error(f"unknown strategies {unknown}; expected some of {', '.join(STRATEGIES)}")
    retrieval = RetrievalExperiment.load(args.retrieval_config)
    data_dir, runs, rruns = Path(args.data), Path(args.runs), Path(args.retrieval_runs)
    seeds = parse_seeds(args.seeds)
    runs.mkdir(parents=True, exist_ok=True)

    manifest = open_dataset(data_dir, args.stamps_root)
    source = FeatureSource.from_args(
        args.features_from, args.bundle, rruns, retrieval.backbone, retrieval.crop
    )
    features, input_feature = source(manifest), source.input_feature
    backbone = None if source.bundle else ensure_backbone(source.run, retrieval.backbone, retrieval.crop)
    own_bundle = Bundle(source.bundle) if source.bundle else None
    corpus_a = load_corpus_a(
        args.corpus_a, [r.id for r in manifest.records], args.stamps_root or cfg.stamps_root
    )
    if "sequential" in strategies and corpus_a is None:
        print(
            "      skipping Sequential Learning: no corpus A (--corpus-a tuxpaint or a JSON {id: [sentences]})"
        )
        strategies = [s for s in strategies if s != "sequential"]

    results: list[dict[str, Any]] = []
    for seed in [] if args.served_only else seeds:
        split = seeded_split(data_dir, rruns, seed)
        done = run_strategies(runs, seed, split, features, cfg, strategies, corpus_a, input_feature)
        results += done
        outputs = {r["strategy"]: r["sentences"] for r in done}
        recs: dict[str, list] = {}
        if not args.no_baseline:
            baseline = run_baseline(runs, rruns, seed, split, backbone, features, retrieval, own_bundle)
            results.append(baseline)
            recs = baseline["recommendations"]
        if seed == seeds[0] and args.gallery:
            page = write_seed_gallery(
                runs / "gallery", split, seed, args.gallery, outputs, recs, dataset_name(data_dir)
            )
            print(f"      gallery: {page}")

    if not args.served_only:
        (runs / "results.json").write_text(
            json.dumps(
                [{k: v for k, v in r.items() if k not in SUMMARY_DROPS} for r in results],
                ensure_ascii=False,
                indent=1,
            ),
            encoding="utf-8",
        )
        table = format_table(results, strategies, dataset_name(data_dir))
        (runs / "captioning.md").write_text(table + "\n", encoding="utf-8")
        print()
        print(table)

    if args.bundle:
        if args.served_only:
            results = recorded_results(runs, seeds, strategies)
            print(f"      served-only: {len(results)} strategy results already in {runs} to choose from")
        serve = served_strategy(cfg, strategies, results)
        split = seeded_split(data_dir, rruns, seeds[0])
        bundle_dir = Path(args.bundle)
        out = runs / "captioner"
        print(f"training the served captioner ({serve}, seed {seeds[0]} split) -> {out}")
        train_captioner_component(
            split, features, out, cfg, input_feature, seeds[0], Bundle(bundle_dir), serve
        )
        from xlsearch.bundle.components import attach_component

        attach_component(bundle_dir, out)
        print(f"attached to {bundle_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
