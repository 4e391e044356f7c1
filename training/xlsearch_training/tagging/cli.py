"""The tagging experiment (COCO-CN Table IV in Tux Paint form) and the served tagger.

For every seeded split and every model of the config (zh-only MLP, Multi-task MLP, Cascading MLP) it trains on the
split's train images (val picks the epochs), evaluates the test images that carry a vocabulary tag with k = 5,
k = the rounded mean training tag count, k = the label-quantity prediction (LQP) and the oracle k (true count),
and writes ``<runs>/tagging.md`` + ``<runs>/results.json`` (mean +- std over seeds). A seed/model whose
``result.json`` exists is skipped (resume).

``--serve`` also trains the served tagger (the config's ``serve`` model: cascade + LQP + user-tag input) into
``<runs>/component``, on the --data manifest's own train split — the split the served retrieval bundle was trained
on — with val picking the epochs and its test metrics recorded in ``component.json``; ``--bundle DIR`` does the same
and attaches it to that bundle (whose image encoder must emit the ``feature`` output).

    xlsearch-train-tagger --data data/tuxpaint --runs runs/tagging --features-from runs/demo --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xlsearch.common import progress as progress_display
from xlsearch.data.manifest import Manifest
from xlsearch.encode.tag_vocab import extract_image_tags, image_tags_en
from xlsearch_training.config import CONFIG_DIR
from xlsearch_training.inputs import (
    ensure_backbone,
    ensure_dataset,
    image_vectors,
    parse_seeds,
    seeded_split,
    slug,
)
from xlsearch_training.tagging.component import train_tagger_component
from xlsearch_training.tagging.config import TaggerConfig, TaggingExperiment
from xlsearch_training.tagging.data import tag_data
from xlsearch_training.tagging.evaluate import evaluate_modes
from xlsearch_training.tagging.report import format_table
from xlsearch_training.tagging.train import fit_tagger

DEFAULT_CONFIG = CONFIG_DIR / "tagging_tuxpaint.json"


def load_features(
    manifest: Manifest, features_from: Path, experiment: TaggingExperiment, cache: Path | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Backbone vectors of every image (by default from the retrieval pipeline's cache under ``features_from``)
    and the component's input feature spec."""
    backbone = ensure_backbone(features_from, experiment.backbone, experiment.crop)
    cache = cache or features_from / "cache" / "features"
    vectors = image_vectors(manifest, backbone.onnx, backbone.spec["preprocess"], cache)
    spec = {
        "dim": int(backbone.spec["dim"]),
        "backbone": backbone.spec["backbone"],
        "preprocess": backbone.spec["preprocess"],
    }
    return vectors, spec


def english_extra(
    runs: Path,
    features_from: Path,
    experiment: TaggingExperiment,
    stamps_root: str | None,
    progress: bool = True,
) -> tuple[dict[str, list[str]], dict[str, np.ndarray]]:
    """{id: English tags} and features of the English-only Tux Paint stamps."""
    from xlsearch_training.tagging.english_only import DEFAULT_STAMPS_ROOT, english_only_stamps

    extra = english_only_stamps(runs / "english_only", Path(stamps_root or DEFAULT_STAMPS_ROOT), progress)
    vectors, _ = load_features(extra, features_from, experiment, runs / "cache" / "features")
    return {r.id: image_tags_en(r) for r in extra.records if r.id in vectors}, vectors


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    """The config fields that change a result (not the progress display)."""
    return {k: v for k, v in config.items() if k != "progress"}


def run_one(
    split: Manifest,
    features: dict[str, np.ndarray],
    cfg: TaggerConfig,
    seed: int,
    name: str,
    out: Path,
    extra: dict[str, list[str]] | None,
) -> dict[str, Any]:
    path = out / "result.json"
    if path.exists():
        done = json.loads(path.read_text(encoding="utf-8"))
        if _settings(done.get("config", {})) == _settings(cfg.to_dict()):
            return done
        print(f"      {path}: trained with another config; retraining")
    start = time.time()
    tags = extract_image_tags(split.records)
    trained = fit_tagger(split, features, cfg, seed, tags, extra)
    test = tag_data(split.split("test"), features, tags, trained.zh_vocab, trained.en_vocab)
    result = {
        "model": name,
        "seed": seed,
        "config": cfg.to_dict(),
        "test_images": int(test.zh_tagged.sum()),
        "test_split_images": len(test.ids),
        "train_seconds": round(time.time() - start, 1),
        "training": trained.log,
        **evaluate_modes(trained, test),
    }
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", default="data/tuxpaint", help="dataset manifest folder (Tux Paint is built if absent)"
    )
    ap.add_argument("--runs", default="runs/tagging", help="output folder")
    ap.add_argument(
        "--features-from",
        help="a retrieval run folder whose backbone + feature cache to reuse (default: --runs)",
    )
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="experiment JSON")
    ap.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated split seeds")
    ap.add_argument("--models", help="comma-separated subset of the config's model names")
    ap.add_argument("--serve", action="store_true", help="also train the served tagger into <runs>/component")
    ap.add_argument(
        "--bundle", help="train the served tagger and attach it to this bundle folder (implies --serve)"
    )
    ap.add_argument(
        "--served-only",
        action="store_true",
        help="only the served tagger (implies --serve): no experiment table, results.json and tagging.md untouched",
    )
    ap.add_argument("--stamps-root", help="Tux Paint stamps folder (default: the Debian package's)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars or progress lines")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.no_progress:
        progress_display.set_enabled(False)

    experiment = TaggingExperiment.load(args.config)
    data, runs = Path(args.data), Path(args.runs)
    features_from = Path(args.features_from) if args.features_from else runs
    seeds = parse_seeds(args.seeds)
    models = list(experiment.models)
    if args.models:
        models = [name.strip() for name in args.models.split(",")]
    progress = not args.no_progress
    configs = {name: experiment.tagger_config(name, progress) for name in models}
    served = experiment.served_config(progress)

    manifest = ensure_dataset(data, args.stamps_root)
    features, input_feature = load_features(manifest, features_from, experiment)
    extra_en: dict[str, list[str]] | None = None
    if any(c.english_only_images for c in [*configs.values(), served]):
        extra_en, extra_vectors = english_extra(runs, features_from, experiment, args.stamps_root, progress)
        features = {**features, **extra_vectors}
        print(f"      {len(extra_en)} English-only stamps for the cascade's first stage")

    results: list[dict[str, Any]] = []
    for seed in [] if args.served_only else seeds:
        split = seeded_split(data, runs, seed)
        for name, cfg in configs.items():
            r = run_one(split, features, cfg, seed, name, runs / f"seed{seed}" / slug(name), extra_en)
            results.append(r)
            print(
                f"seed {seed} {name}: F@5 {r['k=5']['f']:.3f}  I-F1 k=mean {r['k=mean']['i_f1']:.3f} "
                f"LQP {r['LQP']['i_f1']:.3f} oracle {r['oracle k']['i_f1']:.3f}  ({r['train_seconds']} s)"
            )

    runs.mkdir(parents=True, exist_ok=True)
    if not args.served_only:
        (runs / "results.json").write_text(
            json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8"
        )
        table = format_table(results, models)
        (runs / "tagging.md").write_text(table + "\n", encoding="utf-8")
        print()
        print(table)

    if args.serve or args.bundle or args.served_only:
        component = train_tagger_component(
            manifest, features, runs / "component", served, input_feature, seed=0, extra_english=extra_en
        )
        print(f"\nserved tagger: {component}")
        if args.bundle:
            from xlsearch.bundle.components import attach_component

            attach_component(Path(args.bundle), component)
            print(f"attached to {args.bundle}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
