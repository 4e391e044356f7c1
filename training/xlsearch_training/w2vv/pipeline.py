"""The retrieval experiment on one dataset: manifest -> image features -> W2VV encoders (every variant, every
seed) -> bundles -> benchmark table. Every stage caches to disk, so a re-run resumes where it stopped.

    xlsearch-train --data data/tuxpaint --runs runs/demo --seeds 0,1,2,3,4      # every variant (make experiments)
    xlsearch-train --data data/tuxpaint --runs runs/demo --seeds 0 --served-only  # the served one (make demo)

Each seed re-splits the manifest 70/15/15 (``--split seeded``, runs in ``<runs>/seed<N>``), or keeps the
manifest's own ``split`` field (``--split manifest``, runs in ``<runs>/manifest-split/seed<N>``; the seed then only
seeds the training). ``<runs>/results.json`` and ``benchmark.md`` hold every (variant, seed, split) run so far: a
later run with other ``--variants`` or seeds adds to them. The served variant's bundle of the first seed is copied
to ``<runs>/bundle`` when that variant was run.

The shared stages 1-4 live in ``xlsearch_training.inputs``; the experiment file is read as a
``w2vv.config.RetrievalExperiment``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xlsearch.bundle.manifest import update_bundle_manifest
from xlsearch.bundle.runtime import Bundle
from xlsearch.common import progress
from xlsearch.common.atomic import write_text_atomic
from xlsearch.data.manifest import Manifest
from xlsearch.eval.benchmark import evaluate
from xlsearch.eval.report import format_results, run_label
from xlsearch_training.config import CONFIG_DIR
from xlsearch_training.inputs import (
    SPLITS,
    Backbone,
    ensure_backbone,
    ensure_dataset,
    image_vectors,
    parse_seeds,
    seed_folder,
    sentence_vectors,
    slug,
    split_for,
)
from xlsearch_training.w2vv.bundle_writer import write_w2vv_bundle
from xlsearch_training.w2vv.config import RetrievalExperiment, TrainConfig
from xlsearch_training.w2vv.image_head import ImageEncoder
from xlsearch_training.w2vv.train import train_pair

DEFAULT_CONFIG = CONFIG_DIR / "tuxpaint.json"


def run_variant(
    name: str,
    cfg: TrainConfig,
    split_manifest: Manifest,
    seed: int,
    backbone: Backbone,
    vectors: dict[str, np.ndarray],
    sent: dict[str, dict[str, Any]],
    sentence_spec: dict | None,
    out: Path,
    cache: Path,
) -> dict[str, Any]:
    result_path = out / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    t0 = time.time()
    head, encoders = train_pair(
        cfg, split_manifest, vectors, sent if cfg.sentence_branch else None, seed=seed
    )
    bundle_dir = out / "bundle"
    spec = {
        **backbone.spec,
        "dim": head.dim,
        "head": {"center": cfg.center_images, "proj_dim": cfg.image_projection},
    }
    extra = {"name": name, "dataset": str(split_manifest.root), "seed": seed}
    sentence = sentence_spec if sentence_spec else None
    image_encoder = ImageEncoder(backbone.module, head)

    write_w2vv_bundle(
        bundle_dir, image_encoder, spec, encoders, cfg, sentence, {"alpha": 0.5, "cl_space": "visual"}, extra
    )
    # Index vectors come from the bundle's own image encoder, exactly as the indexer will compute them.
    index_vectors = image_vectors(
        split_manifest, bundle_dir / "image_encoder.onnx", spec["preprocess"], cache
    )
    metrics = evaluate(Bundle(bundle_dir), split_manifest, index_vectors)
    # Serve the CL space + alpha chosen on validation by the one-standard-error rule toward zero-shot e5
    # (xlsearch.eval.fusion.choose_fusion): validation scores of the trained heads are inflated by epoch selection.
    fusion = metrics["fusion"]
    space = fusion["cl_space"]
    update_bundle_manifest(bundle_dir, {"fusion": fusion, "benchmark": metrics["rows"]})  # no re-export
    result = {
        "variant": name,
        "seed": seed,
        "train_seconds": round(time.time() - t0, 1),
        "served_cl": space,
        "best_val": {lang: e.best for lang, e in encoders.items()},
        **metrics,
    }
    result_path.write_text(json.dumps(result, indent=1))
    return result


def select_variants(variants: dict[str, Any], wanted: str) -> dict[str, Any]:
    """The variants named in `wanted` (names or slugs, comma-separated; names may themselves hold commas)."""
    if wanted in variants:
        return {wanted: variants[wanted]}
    by_slug = {slug(k): k for k in variants}
    chosen = []
    for item in (w.strip() for w in wanted.split(",")):
        name = item if item in variants else by_slug.get(slug(item))
        if name is None:
            raise SystemExit(
                f"xlsearch-train: unknown variant {item!r}; the config has: {', '.join(by_slug)}"
            )
        chosen.append(name)
    return {k: variants[k] for k in chosen}


def holds_model(dst: Path, src: Path) -> bool:
    """Whether bundle ``dst`` holds every file of bundle ``src`` unchanged (by the manifests' content hashes): a
    re-run then leaves ``dst`` and the tagger / captioner attached to it alone."""
    try:
        have = json.loads((dst / "manifest.json").read_text(encoding="utf-8"))["files"]
        want = json.loads((src / "manifest.json").read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError):
        return False
    return all(have.get(name) == digest for name, digest in want.items())


def merge_results(path: Path, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs recorded in ``path`` (a results.json) with ``new`` ones replacing those of the same (variant,
    seed, split) in place and the others appended: a run with a subset of the variants adds to the table."""

    def key(r: dict[str, Any]) -> tuple:
        return r["variant"], r["seed"], r.get("split", "seeded")

    old = json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
    fresh = {key(r): r for r in new}
    merged = [fresh.pop(key(r), r) for r in old]
    return merged + [r for r in new if key(r) in fresh]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", default="data/tuxpaint", help="dataset manifest folder (Tux Paint is built if absent)"
    )
    ap.add_argument("--runs", default="runs/demo", help="output folder (bundles, caches, results)")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="experiment JSON (backbone, variants)")
    ap.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds")
    ap.add_argument(
        "--split",
        choices=SPLITS,
        default="seeded",
        help="seeded: re-split the manifest 70/15/15 with each seed; manifest: keep the manifest's own split "
        "field (the seed then only seeds the training)",
    )
    picked = ap.add_mutually_exclusive_group()
    picked.add_argument(
        "--variants",
        help="comma-separated subset of the config's variants, by slug (e5-sentence-branch-joint-space-infonce) "
        "or by name when the name has no comma",
    )
    picked.add_argument(
        "--served-only", action="store_true", help="only the config's served variant (its 'serve' field)"
    )
    ap.add_argument("--stamps-root", help="Tux Paint stamps folder (default: the Debian package's)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars or progress lines")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.no_progress:
        progress.set_enabled(False)

    experiment = RetrievalExperiment.load(args.config)
    data, runs = Path(args.data), Path(args.runs)
    seeds = parse_seeds(args.seeds)
    variants = experiment.variants
    served = experiment.serve
    if args.served_only:
        if served is None:
            ap.error(f"--served-only: {experiment.source} names no served variant ('serve')")
        variants = {served: variants[served]}
    elif args.variants:
        variants = select_variants(variants, args.variants)

    print(f"[1/5] dataset {data}")
    manifest = ensure_dataset(data, args.stamps_root)
    print("[2/5] image backbone")
    backbone = ensure_backbone(runs, experiment.backbone, experiment.crop)
    print(f"[3/5] image features for {len(manifest)} images")
    cache = runs / "cache" / "features"
    vectors = image_vectors(manifest, backbone.onnx, backbone.spec["preprocess"], cache)
    sentence_spec = experiment.sentence_encoder
    print("[4/5] pretrained sentence vectors (e5)")
    sent = sentence_vectors(manifest, sentence_spec, runs / "cache" / "sentences")

    results: list[dict[str, Any]] = []
    where = "the manifest's own split" if args.split == "manifest" else "seeded 70/15/15 splits"
    print(f"[5/5] training {len(variants)} variants x {len(seeds)} seeds on {where}, then benchmarking")
    for seed in seeds:
        split_manifest = split_for(data, runs, seed, args.split)
        for name in variants:
            cfg = experiment.train_config(name)
            r = run_variant(
                name,
                cfg,
                split_manifest,
                seed,
                backbone,
                vectors,
                sent,
                sentence_spec,
                seed_folder(runs, seed, args.split) / slug(name),
                cache,
            )
            r["split"] = args.split
            results.append(r)
            rows = r["rows"]
            print(
                f"      seed {seed} {name}: CM {rows['CM']['mrr']:.3f} "
                + " ".join(
                    f"{k} {v['mrr']:.3f}" for k, v in rows.items() if k.startswith("CLM[") and "all" not in k
                )
            )

    written = []
    if served in variants and seeds:
        src, dst = seed_folder(runs, seeds[0], args.split) / slug(served) / "bundle", runs / "bundle"
        what = f"{served}, seed {seeds[0]}, {where.removesuffix('s')}"
        if holds_model(dst, src):
            written.append(
                f"served bundle: {dst} ({what}) already holds this model; attached components kept"
            )
        else:
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(src, dst)
            written.append(f"served bundle: {dst} ({what})")
    runs.mkdir(parents=True, exist_ok=True)
    results = merge_results(runs / "results.json", results)
    write_text_atomic(runs / "results.json", json.dumps(results, indent=1, ensure_ascii=False))
    served_label = None
    if served is not None:
        labels = {run_label(r) for r in results if r["variant"] == served}
        # the served bundle's own run when this run wrote one, else whichever split of it was recorded
        mine = run_label({"variant": served, "split": args.split})
        served_label = mine if mine in labels else next(iter(sorted(labels)), served)
    table = format_results(results, served_label)
    write_text_atomic(runs / "benchmark.md", table + "\n")
    print()
    print(table)
    print(f"\nresults ({len(results)} runs): {runs / 'results.json'}, {runs / 'benchmark.md'}")
    for line in written:
        print(line)
    if served is not None and not written:
        print(f"served bundle: not written ({served!r} was not among the variants run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
