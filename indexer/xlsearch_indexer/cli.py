"""``xlsearch index``: build an index folder from a manifest or a folder of images (see docs/indexing.md)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from xlsearch.common.timing import StageTimer
from xlsearch.index.image_index import (
    DEFAULT_EF_SEARCH,
    DEFAULT_FACTORY,
    DEFAULT_NPROBE,
    BundleKey,
    IndexFormatError,
)
from xlsearch_indexer.encoder import DEFAULT_MIN_TAG_SCORE, BundleEncoder, ImageDecoder
from xlsearch_indexer.job import IndexWriter, JobResult, checkpoint_for, run_job
from xlsearch_indexer.sources import folder_source, manifest_source

__all__ = ["build_parser", "main", "summary_table"]

STAGE_ORDER = (
    "read",
    "load",
    "resume",
    "map",
    "decode",
    "wait",
    "encode_images",
    "encode_captions",
    "wait_captions",
    "checkpoint",
)
STAGE_ORDER += ("index", "save")


def build_parser() -> argparse.ArgumentParser:
    from xlsearch.encode.onnx import available_cpus

    cpus = available_cpus()
    ap = argparse.ArgumentParser(
        prog="xlsearch index", description="Build an xlsearch index folder (resumable)."
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--manifest", help="dataset manifest (folder or manifest.jsonl): en = captions, tags_zh = tags"
    )
    src.add_argument("--images", metavar="DIR", help="a folder of images (searched recursively)")
    ap.add_argument(
        "--captions", metavar="FILE", help="with --images: CSV 'image,caption' or JSONL {image, caption}"
    )
    ap.add_argument(
        "--split", action="append", default=[], help="with --manifest: only this split (repeatable)"
    )
    ap.add_argument("--bundle", required=True, help="bundle folder")
    ap.add_argument("--out", required=True, help="index folder to write (replaced atomically)")
    ap.add_argument(
        "--factory",
        default=DEFAULT_FACTORY,
        help="IDMap,Flat (exact) | HNSW32 | IVF256,Flat | IVFauto,PQ32 ...",
    )
    ap.add_argument(
        "--ef-search",
        type=int,
        default=None,
        help=f"HNSW: candidates per search, stored in the index (default: {DEFAULT_EF_SEARCH}; the server's "
        "--ef-search overrides)",
    )
    ap.add_argument(
        "--nprobe",
        type=int,
        default=None,
        help=f"IVF: lists visited per search, stored in the index (default: {DEFAULT_NPROBE}; the server's "
        "--nprobe overrides)",
    )
    ap.add_argument("--batch-size", type=int, default=32, help="images per ONNX Runtime call")
    ap.add_argument("--workers", type=int, default=min(4, cpus), help="image decoding threads")
    ap.add_argument(
        "--threads",
        type=int,
        default=max(1, cpus // 2),
        help="ONNX Runtime / sentence-encoder threads each (default: half the CPUs: images, captions and "
        "decoding run side by side, docs/benchmarks.md)",
    )
    ap.add_argument("--chunk-size", type=int, default=512, help="images per checkpoint chunk")
    ap.add_argument("--max-image-bytes", type=int, default=32 << 20, help="skip larger image files")
    ap.add_argument(
        "--no-predicted-tags",
        action="store_true",
        help="do not store the bundle tagger's predicted Chinese tags (only the source's own tags)",
    )
    ap.add_argument(
        "--min-tag-score",
        type=float,
        default=DEFAULT_MIN_TAG_SCORE,
        help="store a predicted tag only when its probability reaches this (default: %(default)s)",
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    where = ap.add_argument_group("index backend (docs/scaling.md)")
    where.add_argument(
        "--backend",
        choices=("faiss", "milvus"),
        default="faiss",
        help="faiss: the index folder --out; milvus: a Milvus collection (--out keeps report.json)",
    )
    where.add_argument("--milvus-uri", help="http://host:19530, or a Milvus Lite file (path/x.db)")
    where.add_argument("--milvus-collection", default="xlsearch", help="collection (alias) to (re)place")
    where.add_argument(
        "--milvus-index", default="FLAT", help="FLAT (exact) | HNSW | IVF_FLAT | IVF_PQ | AUTOINDEX"
    )
    dist = ap.add_argument_group("distributed mapping on Ray Data (the [distributed] extra)")
    dist.add_argument("--ray", action="store_true", help="decode and encode in Ray Data actors")
    dist.add_argument(
        "--ray-address", help="Ray cluster address (e.g. ray://head:10001 or auto); default: a local Ray"
    )
    dist.add_argument("--actors", type=int, default=1, help="image mapper actors (one bundle load each)")
    dist.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs Ray reserves per actor")
    dist.add_argument(
        "--gpus-per-actor",
        type=float,
        default=0.0,
        help="GPUs per actor (> 0: ONNX Runtime's CUDA provider, CPU as fallback)",
    )
    return ap


SETTINGS = (
    "batch_size",
    "workers",
    "threads",
    "chunk_size",
    "max_image_bytes",
    "no_predicted_tags",
    "min_tag_score",
    "backend",
    "ray",
)


def make_writer(args: argparse.Namespace, bundle: Any) -> Any:
    """The FAISS folder writer, or the Milvus one (``milvus_writer``)."""
    if args.backend == "faiss":
        return IndexWriter(bundle, args.factory, args.out, ef_search=args.ef_search, nprobe=args.nprobe)
    if not args.milvus_uri:
        raise ValueError("--backend milvus needs --milvus-uri")
    from xlsearch_indexer.milvus_writer import MilvusWriter

    return MilvusWriter(
        bundle,
        args.milvus_uri,
        args.milvus_collection,
        args.out,
        index_type=args.milvus_index,
        ef_search=args.ef_search,
        nprobe=args.nprobe,
        token=os.environ.get("XLSEARCH_MILVUS_TOKEN"),
    )


def ray_job(
    args: argparse.Namespace,
    source: Any,
    writer: Any,
    checkpoint: Any,
    timer: StageTimer,
    settings: dict[str, Any],
) -> JobResult:
    """``--ray``: the same job with its mapping in Ray Data actors (``ray_job``)."""
    try:
        from xlsearch_indexer.ray_job import RayOptions, run_ray_job
    except ImportError as e:
        raise ValueError(
            f"--ray needs the [distributed] extra (pip install 'xlsearch[distributed]'): {e}"
        ) from None
    opts = RayOptions(args.ray_address, args.actors, args.cpus_per_actor, args.gpus_per_actor)
    return run_ray_job(
        source,
        args.bundle,
        checkpoint,
        writer,
        opts,
        threads=args.threads,
        batch_size=args.batch_size,
        workers=args.workers,
        chunk_size=args.chunk_size,
        max_image_bytes=args.max_image_bytes,
        predict_tags=not args.no_predicted_tags,
        min_tag_score=args.min_tag_score,
        progress=not args.no_progress,
        timer=timer,
        settings=settings,
    )


def summary_table(result: JobResult) -> str:
    secs = result.seconds
    names = [s for s in STAGE_ORDER if s in secs] + sorted(set(secs) - set(STAGE_ORDER))
    width = max(len(n) for n in [*names, "stage"])
    lines = [f"{'stage':<{width}}  seconds"]
    for n in names:
        note = "  (thread-seconds, overlaps)" if n == "decode" else ""
        lines.append(f"{n:<{width}}  {secs[n]:7.2f}{note}")
    lines.append(f"{'total':<{width}}  {result.wall_seconds:7.2f}")
    lines.append(
        f"images {result.total}  indexed {result.indexed}  skipped {len(result.skipped)}  "
        f"reused {result.reused}  computed {result.computed}  {result.images_per_second:.1f} images/s"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.captions and not args.images:
        print("xlsearch index: error: --captions needs --images", file=sys.stderr)
        return 2
    if args.split and not args.manifest:
        print("xlsearch index: error: --split needs --manifest", file=sys.stderr)
        return 2
    from xlsearch.bundle.manifest import BundleError
    from xlsearch.bundle.runtime import Bundle
    from xlsearch.data.manifest import ManifestError

    timer = StageTimer()
    t0 = time.perf_counter()
    try:
        with timer("read"):
            source = (
                manifest_source(args.manifest, args.split)
                if args.manifest
                else folder_source(args.images, args.captions)
            )
        with timer("load"):
            bundle = Bundle(args.bundle, intra_op_threads=args.threads)
        writer = make_writer(args, bundle)
        settings = {k: getattr(args, k) for k in SETTINGS}
        checkpoint = checkpoint_for(args.out, BundleKey.of(bundle))
        if args.ray:
            result = ray_job(args, source, writer, checkpoint, timer, settings)
        else:
            result = run_job(
                source,
                ImageDecoder(bundle.preprocess_config, args.max_image_bytes),
                BundleEncoder(
                    bundle, predict_tags=not args.no_predicted_tags, min_tag_score=args.min_tag_score
                ),
                checkpoint,
                writer,
                batch_size=args.batch_size,
                workers=args.workers,
                chunk_size=args.chunk_size,
                progress=not args.no_progress,
                timer=timer,
                settings=settings,
            )
    except (ManifestError, BundleError, IndexFormatError, FileNotFoundError, ValueError) as e:
        print(f"xlsearch index: error: {e}", file=sys.stderr)
        return 2
    result.wall_seconds = time.perf_counter() - t0
    print(summary_table(result))
    for s in result.skipped[:10]:
        print(f"skipped {s['id']}: {s['reason']}", file=sys.stderr)
    if len(result.skipped) > 10:
        print(
            f"... {len(result.skipped) - 10} more skipped, see {result.out / 'report.json'}", file=sys.stderr
        )
    print(f"wrote {result.out}")
    if not result.indexed:
        print("xlsearch index: error: no image could be indexed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
