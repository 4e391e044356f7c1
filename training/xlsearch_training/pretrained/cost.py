"""Query and indexing cost per item of zero-training bundles, measured on seeded random weights (the same compute
as the released weights: same architecture, same ONNX graph).

For each ``--cm`` tower the bundle is exported (`write_pretrained_bundle`, ONNX parity checked) into
``<work>/<name>``, loaded through the serving runtime (`xlsearch.bundle.runtime.Bundle`, ``--threads`` ONNX Runtime
intra-op threads), then timed on real inputs (Tux Paint stamps and their Chinese descriptions, or ``--manifest``):

- indexing: ``Bundle.encode_images`` on batches of ``--batch`` decoded images (preprocessing + image tower), per image;
- query: the text tower on one Chinese query (``encode_texts``, batch 1) and the e5 sentence encoder on the same
  query (CL e5; the same for every bundle), per query.

Every figure is the median over ``--repeats`` rounds (queries: over every query of every round); the machine load
(``os.getloadavg``) is printed beside the table. Times are wall-clock on whatever else the machine is running, so
with ``--reference BUNDLE`` (e.g. the trained runs/demo/bundle) that bundle is timed first and again right after
each tower: the "x reference" ratios compare the two under the same load.

    python -m xlsearch_training.pretrained.cost --cm cn-clip:RN50,cn-clip:ViT-B-16 --reference runs/demo/bundle \
        --work runs/cost --json runs/cost/cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from xlsearch.bundle.runtime import Bundle
from xlsearch.data.manifest import read_manifest
from xlsearch_training.pretrained.bundle_writer import write_pretrained_bundle
from xlsearch_training.pretrained.open_clip_hf import train_local_tokenizer

__all__ = ["main", "measure"]


def _inputs(manifest_dir: str | None, n_images: int, n_queries: int) -> tuple[list[Image.Image], list[str]]:
    m = read_manifest(manifest_dir or "data/tuxpaint")
    images, queries = [], []
    for r in m.records:
        if len(images) < n_images:
            with Image.open(m.image_path(r)) as im:
                images.append(im.convert("RGB"))
        queries.extend(r.zh[:1])
        if len(images) >= n_images and len(queries) >= n_queries:
            break
    return images, queries[:n_queries]


def _params(module: torch.nn.Module, without: torch.nn.Module | None = None) -> int:
    """Parameters of ``module`` that are not ``without``'s (Chinese-CLIP's text tower wraps the whole model)."""
    skip = {id(p) for p in without.parameters()} if without is not None else set()
    return sum(p.numel() for p in module.parameters() if id(p) not in skip)


def measure(
    cm: str, work: Path, images: list[Image.Image], queries: list[str], batch: int, repeats: int, threads: int
) -> dict[str, Any]:
    from xlsearch_training.pretrained.cli import build_towers

    name = cm.replace(":", "-")
    tokenizer = None
    if cm.startswith(
        "open"
    ):  # random open_clip towers need a tokenizer folder: one trained here on the queries
        tokenizer = str(train_local_tokenizer(queries * 4 + ["a dog", "一只狗"], work / f"{name}-tokenizer"))
    t0 = time.perf_counter()
    towers = build_towers(cm, "random", 0, None, tokenizer)
    params = {"image": _params(towers.image), "text": _params(towers.text, towers.image)}
    out = work / name
    write_pretrained_bundle(out, towers, "e5")
    export_s = time.perf_counter() - t0
    del towers
    row = time_bundle(out, images, queries, batch, repeats, threads)
    return {"cm": cm, "params_m": {k: v / 1e6 for k, v in params.items()}, "export_seconds": export_s, **row}


def time_bundle(
    folder: Path, images: list[Image.Image], queries: list[str], batch: int, repeats: int, threads: int
) -> dict[str, Any]:
    """Median indexing cost per image and query cost per query of the bundle in ``folder``."""
    bundle = Bundle(folder, intra_op_threads=threads)
    sizes = {f: (folder / f).stat().st_size / 2**20 for f in ("image_encoder.onnx", "text_encoder.onnx")
             if (folder / f).is_file()}  # fmt: skip
    bundle.encode_images(images[:batch])  # warm-up
    bundle.encode_texts(queries[:1], "zh")
    bundle.sentence_embeddings(queries[:1], "zh")
    per_image = []
    for _ in range(repeats):
        for i in range(0, len(images) - batch + 1, batch):
            t = time.perf_counter()
            bundle.encode_images(images[i : i + batch])
            per_image.append((time.perf_counter() - t) / batch)
    text_ms, e5_ms = [], []
    for _ in range(repeats):
        for q in queries:
            t = time.perf_counter()
            q_sent = bundle.sentence_embeddings([q], "zh")
            e5_ms.append(1000 * (time.perf_counter() - t))
            t = time.perf_counter()
            bundle.encode_texts([q], "zh", q_sent if bundle.uses_sentence("zh") else None)
            text_ms.append(1000 * (time.perf_counter() - t))
    return {
        "dim": bundle.manifest.dim,
        "image_size": bundle.preprocess_config.image_size,
        "onnx_mib": sizes,
        "image_ms_per_item": 1000 * statistics.median(per_image),
        "images_per_second": 1.0 / statistics.median(per_image),
        "query_text_tower_ms": statistics.median(text_ms),
        "query_e5_ms": statistics.median(e5_ms),
        "rounds": {"image_batches": len(per_image), "queries": len(text_ms)},
        "load_before": os.getloadavg()[0],
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| tower | dim | input px | params image / text (M) | ONNX image / text (MiB) | indexing ms / image | "
        "images / s | query: text tower ms | query: e5 ms | x reference: image / query (same load) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p, s = r.get("params_m"), r["onnx_mib"]
        params = f"{p['image']:.1f} / {p['text']:.1f}" if p else "—"
        v = r.get("vs_reference")
        ratio = f"{v['image']:.1f} / {v['query']:.2f}" if v else "—"
        onnx = " / ".join(f"{s[f]:.0f}" for f in ("image_encoder.onnx", "text_encoder.onnx") if f in s)
        lines.append(
            f"| {r['cm']} | {r['dim']} | {r['image_size']} | {params} | {onnx} | {r['image_ms_per_item']:.1f} | "
            f"{r['images_per_second']:.1f} | {r['query_text_tower_ms']:.1f} | {r['query_e5_ms']:.1f} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--cm", default="cn-clip:RN50,cn-clip:ViT-B-16", help="comma-separated FAMILY:MODEL towers"
    )
    ap.add_argument("--work", default="runs/cost", help="where the random-weights bundles are written")
    ap.add_argument("--manifest", help="images and Chinese queries to time (default: data/tuxpaint)")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime and torch intra-op threads")
    ap.add_argument("--reference", help="also time this existing bundle (e.g. runs/demo/bundle), first")
    ap.add_argument("--keep", action="store_true", help="keep the bundles (default: removed after timing)")
    ap.add_argument("--json", help="append the rows to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    images, queries = _inputs(args.manifest, args.images, args.queries)
    rows = []
    if args.reference:
        print(f"{args.reference}: timing the reference bundle", flush=True)
        rows.append({"cm": f"reference: {args.reference}", **time_bundle(Path(args.reference), images, queries,
                     args.batch, args.repeats, args.threads)})  # fmt: skip
        print(table(rows).splitlines()[-1], flush=True)
    for cm in (c.strip() for c in args.cm.split(",") if c.strip()):
        print(
            f"{cm}: exporting random weights, then timing ({len(images)} images, {len(queries)} queries)",
            flush=True,
        )
        row = measure(cm, work, images, queries, args.batch, args.repeats, args.threads)
        if args.reference:  # the reference timed again right after: a ratio measured under the same load
            ref = time_bundle(Path(args.reference), images, queries, args.batch, args.repeats, args.threads)
            row["vs_reference"] = {"image": row["image_ms_per_item"] / ref["image_ms_per_item"],
                                   "query": (row["query_text_tower_ms"] + row["query_e5_ms"])
                                   / (ref["query_text_tower_ms"] + ref["query_e5_ms"]), "reference": ref}  # fmt: skip
        rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)
        if not args.keep:
            shutil.rmtree(work / cm.replace(":", "-"), ignore_errors=True)
        if args.json:
            path = Path(args.json)
            old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
            path.write_text(json.dumps([*old, row], indent=1), encoding="utf-8")
    print()
    print(table(rows))
    print(f"\n{args.threads} intra-op thread(s); load average (1 min) at each row: "
          + ", ".join(f"{r['load_before']:.1f}" for r in rows))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
