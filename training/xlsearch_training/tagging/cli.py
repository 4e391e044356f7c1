"""The tagging experiment (COCO-CN Table IV in Tux Paint form) and the served tagger.

For every seeded split and every model of the config (zh-only MLP, Multi-task MLP, Cascading MLP) it trains on the
split's train images (val picks the epochs), evaluates the test images that carry a vocabulary tag with k = 5,
k = the rounded mean training tag count, k = the label-quantity prediction (LQP) and the oracle k (true count),
and writes ``<runs>/tagging.md`` + ``<runs>/results.json`` (mean +- std over seeds). A seed/model whose
``result.json`` exists is skipped (resume).

``--serve`` also trains the served tagger into ``<runs>/component``, on the --data manifest's own train split — the
split the served retrieval bundle was trained on. Which strategy is served is chosen on that split's validation
images (`xlsearch_training.tagging.select`: F@5, every model of the config as a candidate) unless the config's
``serve`` names a ``model``; ``serve``'s other keys (e.g. ``user_tags``) apply to the chosen one. ``--bundle DIR``
does the same and attaches it to that bundle (whose image encoder must emit the ``feature`` output).

Nothing is assumed about the data: the English-only images of the cascade's first stage come only from
``--english-only`` (``tuxpaint``: the Tux Paint stamps without a zh_CN line, under ``--stamps-root``; or a manifest
folder of English-captioned images), and a model that wants them is skipped with a message when none are given.
Features come from a retrieval run (``--features-from``) or, for a zero-training bundle (``xlsearch bundle
pretrained``), from the bundle's own image encoder (``--bundle`` without ``--features-from``).

    xlsearch-train-tagger --data data/tuxpaint --runs runs/tagging --features-from runs/demo --seeds 0,1,2,3,4 \
        --english-only tuxpaint
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xlsearch.common import progress as progress_display
from xlsearch.data.manifest import Manifest, read_manifest
from xlsearch.encode.tag_vocab import extract_image_tags, image_tags_en
from xlsearch_training.config import CONFIG_DIR
from xlsearch_training.inputs import parse_seeds, seeded_split, slug
from xlsearch_training.tagging.component import train_tagger_component
from xlsearch_training.tagging.config import TaggerConfig, TaggingExperiment
from xlsearch_training.tagging.data import tag_data
from xlsearch_training.tagging.evaluate import evaluate_modes
from xlsearch_training.tagging.report import format_table
from xlsearch_training.tagging.select import VAL_METRIC, choose_candidate, mlp_candidates
from xlsearch_training.tagging.sources import DEFAULT_DATA, FeatureSource, open_dataset
from xlsearch_training.tagging.train import fit_tagger

DEFAULT_CONFIG = CONFIG_DIR / "tagging_tuxpaint.json"


def english_extra(
    source: str,
    runs: Path,
    features: Callable[[Manifest, Path], dict[str, np.ndarray]],
    stamps_root: str | None,
    progress: bool = True,
) -> tuple[dict[str, list[str]], dict[str, np.ndarray]]:
    """{id: English tags} and features of the English-only images named by ``--english-only``: ``tuxpaint`` (the
    stamps without a zh_CN line) or a manifest folder (its records' English captions and tags)."""
    if source == "tuxpaint":
        from xlsearch_training.tagging.english_only import DEFAULT_STAMPS_ROOT, english_only_stamps

        extra = english_only_stamps(runs / "english_only", Path(stamps_root or DEFAULT_STAMPS_ROOT), progress)
    else:
        extra = read_manifest(source)
    vectors = features(extra, runs / "cache" / "features")
    out = {r.id: image_tags_en(r) for r in extra.records if r.id in vectors}
    return {k: v for k, v in out.items() if v}, vectors


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
        "--data", default=str(DEFAULT_DATA), help="dataset manifest folder (Tux Paint is built if absent)"
    )
    ap.add_argument("--runs", default="runs/tagging", help="output folder")
    ap.add_argument(
        "--features-from",
        help="a retrieval run folder whose backbone + feature cache to reuse (default: a pretrained --bundle's "
        "own image encoder, else --runs)",
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
    ap.add_argument(
        "--english-only",
        help="English-only images for the cascade's first stage: 'tuxpaint' (stamps without a zh_CN line) or a "
        "manifest folder; models that want them are skipped without it",
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
    seeds = parse_seeds(args.seeds)
    models = list(experiment.models)
    if args.models:
        models = [name.strip() for name in args.models.split(",")]
    progress = not args.no_progress
    configs = {name: experiment.tagger_config(name, progress) for name in models}
    wanted = [name for name, c in configs.items() if c.english_only_images]
    if wanted and not args.english_only:
        print(f"      skipping {', '.join(wanted)}: no English-only images given (--english-only)")
        configs = {name: c for name, c in configs.items() if not c.english_only_images}
        models = list(configs)

    manifest = open_dataset(data, args.stamps_root)
    source = FeatureSource.from_args(
        args.features_from, args.bundle, runs, experiment.backbone, experiment.crop
    )
    features, input_feature = source(manifest), source.input_feature
    extra_en: dict[str, list[str]] | None = None
    if args.english_only:
        extra_en, extra_vectors = english_extra(args.english_only, runs, source, args.stamps_root, progress)
        features = {**features, **extra_vectors}
        print(f"      {len(extra_en)} English-only images for the cascade's first stage")

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
    if results:
        table = format_table(results, models)
        (runs / "tagging.md").write_text(table + "\n", encoding="utf-8")
        print()
        print(table)

    if args.serve or args.bundle or args.served_only:
        component = serve_tagger(
            experiment, configs, manifest, features, input_feature, runs, extra_en, progress
        )
        print(f"\nserved tagger: {component}")
        if args.bundle:
            from xlsearch.bundle.components import attach_component

            attach_component(Path(args.bundle), component)
            print(f"attached to {args.bundle}")
    return 0


def serve_tagger(
    experiment: TaggingExperiment,
    configs: dict[str, TaggerConfig],
    manifest: Manifest,
    features: dict[str, np.ndarray],
    input_feature: dict[str, Any],
    runs: Path,
    extra_en: dict[str, list[str]] | None,
    progress: bool,
) -> Path:
    """The served tagger, in ``<runs>/component``: the config's ``serve.model`` when it names one, else the
    candidate with the best validation F@5 on the manifest's own split (`tagging.select`)."""
    out = runs / "component"
    serve = dict(experiment.serve or {})
    if "model" in serve:
        served = experiment.served_config(progress)
        if served.english_only_images and extra_en is None:
            served = replace(served, english_only_images=False)
            print("      served tagger: no English-only images given, its cascade trains without them")
        print(f"served tagger: {served.model} (fixed by {experiment.source})")
        return train_tagger_component(manifest, features, out, served, input_feature, 0, extra_en)
    candidates = mlp_candidates(manifest, features, configs, serve, input_feature, 0, extra_en)
    best, scores = choose_candidate(candidates)
    print(
        f"served tagger chosen on validation ({VAL_METRIC}): "
        + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
    )
    print(f"      -> {best.name}")
    path = best.build(out)
    (runs / "served_choice.json").write_text(
        json.dumps(
            {"chosen": best.name, "metric": VAL_METRIC, "scores": scores}, indent=1, ensure_ascii=False
        ),
        encoding="utf-8",
    )
    return path


if __name__ == "__main__":
    raise SystemExit(main())
