"""The main job, end to end on one dataset: manifest -> image features -> W2VV encoders (every variant, every
seed) -> bundles -> benchmark table. Every stage caches to disk, so a re-run resumes where it stopped.

    python -m xlsearch_training.w2vv.pipeline --data data/tuxpaint --runs runs/demo --seeds 0,1,2,3,4

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
from xlsearch.data.manifest import Manifest
from xlsearch.eval.benchmark import evaluate
from xlsearch.eval.report import format_results
from xlsearch_training.config import CONFIG_DIR
from xlsearch_training.inputs import (
    Backbone,
    ensure_backbone,
    ensure_dataset,
    image_vectors,
    parse_seeds,
    seeded_split,
    sentence_vectors,
    slug,
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
    # Serve CL in whichever space measured better on validation; record its alpha.
    space = max(metrics["alphas"], key=lambda s: metrics["alphas"][s]["val_mrr"])
    fusion = {"cl_space": space, **metrics["alphas"][space], "candidates": metrics["alphas"]}
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", default="data/tuxpaint", help="dataset manifest folder (Tux Paint is built if absent)"
    )
    ap.add_argument("--runs", default="runs/demo", help="output folder (bundles, caches, results)")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="experiment JSON (backbone, variants)")
    ap.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated split seeds")
    ap.add_argument(
        "--variants",
        help="comma-separated subset of the config's variants, by slug (e5-sentence-branch-joint-space-infonce) "
        "or by name when the name has no comma",
    )
    ap.add_argument("--stamps-root", help="Tux Paint stamps folder (default: the Debian package's)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    experiment = RetrievalExperiment.load(args.config)
    data, runs = Path(args.data), Path(args.runs)
    seeds = parse_seeds(args.seeds)
    variants = experiment.variants
    if args.variants:
        variants = select_variants(variants, args.variants)

    manifest = ensure_dataset(data, args.stamps_root)
    backbone = ensure_backbone(runs, experiment.backbone, experiment.crop)
    print(f"[3/5] image features for {len(manifest)} images")
    cache = runs / "cache" / "features"
    vectors = image_vectors(manifest, backbone.onnx, backbone.spec["preprocess"], cache)
    sentence_spec = experiment.sentence_encoder
    print("[4/5] pretrained sentence vectors (e5)")
    sent = sentence_vectors(manifest, sentence_spec, runs / "cache" / "sentences")

    results: list[dict[str, Any]] = []
    print(f"[5/5] training {len(variants)} variants x {len(seeds)} seeds, then benchmarking")
    for seed in seeds:
        split_manifest = seeded_split(data, runs, seed)
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
                runs / f"seed{seed}" / slug(name),
                cache,
            )
            results.append(r)
            rows = r["rows"]
            print(
                f"      seed {seed} {name}: CM {rows['CM']['mrr']:.3f} "
                + " ".join(
                    f"{k} {v['mrr']:.3f}" for k, v in rows.items() if k.startswith("CLM[") and "all" not in k
                )
            )

    served = experiment.serve
    if served in variants and seeds:
        dst = runs / "bundle"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(runs / f"seed{seeds[0]}" / slug(served) / "bundle", dst)
    (runs / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    table = format_results(results, served)
    (runs / "benchmark.md").write_text(table + "\n", encoding="utf-8")
    print()
    print(table)
    print(f"\nresults: {runs / 'results.json'}   served bundle: {runs / 'bundle'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
