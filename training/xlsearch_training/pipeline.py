"""The main job, end to end on one dataset: manifest -> image features -> W2VV encoders (every variant, every
seed) -> bundles -> benchmark table. Every stage caches to disk, so a re-run resumes where it stopped.

    python -m xlsearch_training.pipeline --data data/tuxpaint --runs runs/demo --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xlsearch.bundle.manifest import update_bundle_manifest
from xlsearch.bundle.runtime import Bundle
from xlsearch.data.datasets.tuxpaint import convert_tuxpaint
from xlsearch.data.manifest import Manifest, read_manifest, resplit_manifest
from xlsearch.encode.features import extract_features
from xlsearch.encode.preprocess import PreprocessConfig
from xlsearch.encode.sentence import build_sentence_encoder, cached_encode
from xlsearch.eval.benchmark import evaluate
from xlsearch.eval.report import format_results
from xlsearch_training.backbones import BackboneConfig, build_backbone
from xlsearch_training.bundle_writer import write_w2vv_bundle
from xlsearch_training.export_image import ImageEncoderHead, export_image_encoder
from xlsearch_training.image_head import ImageEncoder
from xlsearch_training.train_w2vv import TrainConfig, train_pair

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "tuxpaint.json"


@dataclass
class Backbone:
    module: torch.nn.Module  # the frozen backbone (torch), reused by every bundle's image encoder
    onnx: Path  # backbone + L2 normalisation, for feature extraction
    spec: dict[str, Any]  # dim, preprocess, backbone


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def ensure_dataset(data: Path, stamps_root: str | None) -> Manifest:
    if not (data / "manifest.jsonl").exists():
        print(f"[1/5] building the Tux Paint manifest in {data}")
        kwargs = {"stamps_root": stamps_root} if stamps_root else {}
        convert_tuxpaint(data, seed=0, **kwargs)
    else:
        print(f"[1/5] manifest {data / 'manifest.jsonl'} exists")
    return read_manifest(data)


def ensure_backbone(runs: Path, backbone: dict[str, Any], crop: str) -> Backbone:
    """Build the backbone; export it (+ L2 normalisation) to ONNX once per backbone config."""
    folder = runs / "image_encoder" / slug(json.dumps(backbone, sort_keys=True) + crop)
    spec_path = folder / "spec.json"
    bb = build_backbone(BackboneConfig(**backbone))
    if spec_path.exists():
        print(f"[2/5] backbone {folder} exists")
        return Backbone(bb, folder / "image_encoder.onnx", json.loads(spec_path.read_text()))
    print(f"[2/5] exporting the backbone {backbone} to ONNX")
    folder.mkdir(parents=True, exist_ok=True)
    pre = dataclasses.replace(bb.preprocess, crop=crop)
    export_image_encoder(
        ImageEncoderHead(bb, center=None, normalize=True).eval(),
        folder / "image_encoder.onnx",
        image_size=pre.image_size,
    )
    spec = {"dim": bb.dim, "preprocess": pre.to_dict(), "backbone": backbone, "backbone_name": bb.name}
    spec_path.write_text(json.dumps(spec, indent=2))
    return Backbone(bb, folder / "image_encoder.onnx", spec)


def image_vectors(
    manifest: Manifest, onnx: Path, preprocess: dict[str, Any], cache: Path
) -> dict[str, np.ndarray]:
    ids, feats, report = extract_features(
        manifest, onnx, PreprocessConfig.from_dict(preprocess), cache, progress=False
    )
    if report.get("skipped"):
        print(f"      skipped {len(report['skipped'])} unreadable images (see {cache}/report.json)")
    return dict(zip(ids, feats, strict=True))


def sentence_vectors(
    manifest: Manifest, spec: dict[str, Any] | None, cache: Path
) -> dict[str, dict[str, Any]]:
    """e5 vectors of every sentence: zh as queries, en as passages (cached on disk)."""
    if spec is None:
        return {"zh": {}, "en": {}}
    enc = build_sentence_encoder(spec)
    out = {}
    for lang, role in (("zh", "query"), ("en", "passage")):
        texts = sorted({s for r in manifest.records for s in getattr(r, lang)})
        vecs = cached_encode(enc, texts, role, cache)
        out[lang] = dict(zip(texts, vecs, strict=True))
    return out


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

    config = json.loads(Path(args.config).read_text(encoding="utf-8"))
    data, runs = Path(args.data), Path(args.runs)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    variants = config["variants"]
    if args.variants:
        variants = select_variants(variants, args.variants)

    manifest = ensure_dataset(data, args.stamps_root)
    backbone = ensure_backbone(runs, config["backbone"], config.get("crop", "center"))
    print(f"[3/5] image features for {len(manifest)} images")
    cache = runs / "cache" / "features"
    vectors = image_vectors(manifest, backbone.onnx, backbone.spec["preprocess"], cache)
    sentence_spec = config.get("sentence_encoder")
    print("[4/5] pretrained sentence vectors (e5)")
    sent = sentence_vectors(manifest, sentence_spec, runs / "cache" / "sentences")

    results: list[dict[str, Any]] = []
    print(f"[5/5] training {len(variants)} variants x {len(seeds)} seeds, then benchmarking")
    for seed in seeds:
        split_dir = runs / "splits" / f"seed{seed}"
        if not (split_dir / "manifest.jsonl").exists():
            resplit_manifest(data, split_dir, seed)
        split_manifest = read_manifest(split_dir)
        for name, overrides in variants.items():
            cfg = TrainConfig.from_dict({**config.get("train", {}), **overrides})
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

    served = config.get("serve")
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
