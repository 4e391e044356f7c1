"""One side of the AddImages persistence benchmark (``xlsearch_bench.adds``), run as its own process so the code
under test can be another checkout's: ``--code-root DIR`` puts DIR first on the import path (and drops this
checkout's editable install), as ``base_run.py`` does. Only ``xlsearch.index`` is imported, in either layout.

For each size: build an index of N random unit rows (ids ``row-i``, a caption and a tag each; backbone features
when the code stores them), save it, then time adds of B new images the way the server's AddImages persists them:
the old code adds and rewrites the folder (``ImageIndex.save``), the new code goes through ``IndexStore`` (the
change log). Bytes written are the process's ``write_bytes`` from /proc/self/io (what reached the block layer) and
the folder's size change. Prints one JSON object per line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np


def write_bytes() -> int:
    with open("/proc/self/io") as fh:
        for line in fh:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--code-root", default="")
    ap.add_argument("--work", required=True)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--batches", default="1,100")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--cl-dim", type=int, default=256)
    ap.add_argument("--feature-dim", type=int, default=1280)
    ap.add_argument("--factory", default="IDMap,Flat")
    args = ap.parse_args()
    if args.code_root:
        sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
        sys.path.insert(0, args.code_root)
    try:
        from xlsearch.index.image_index import BundleKey, ImageIndex, ImageMeta  # this layout

        new = True
    except ImportError:
        from xlsearch.index import BundleKey, ImageIndex, ImageMeta  # type: ignore[no-redef]  # the old module

        new = False
    import faiss

    faiss.omp_set_num_threads(1)
    key = (
        BundleKey("bench", args.dim, "visual", args.cl_dim, feature_dim=args.feature_dim)
        if new
        else BundleKey("bench", args.dim, "visual", args.cl_dim)
    )
    rng = np.random.default_rng(0)

    def rows(start: int, n: int) -> tuple[list, np.ndarray, np.ndarray, np.ndarray | None]:
        metas = [
            ImageMeta(f"row-{i}", f"/img/{i}.png", (f"a caption {i}",), (f"t{i % 50}",))
            for i in range(start, start + n)
        ]
        feats = unit(rng, n, args.feature_dim).astype(np.float16).astype(np.float32) if new else None
        return metas, unit(rng, n, args.dim), unit(rng, n, args.cl_dim), feats

    for size in [int(s) for s in args.sizes.split(",")]:
        folder = Path(args.work) / f"index-{size}"
        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.perf_counter()
        index = ImageIndex.create(key, args.factory)
        for start in range(0, size, 50_000):
            metas, img, cap, feats = rows(start, min(50_000, size - start))
            if new:
                index.add(metas, img, cap, features=feats)
            else:
                index.add(metas, img, cap)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        index.save(folder)
        save = time.perf_counter() - t0
        store = None
        if new:
            from xlsearch.index.store import IndexStore
            from xlsearch.search.locks import RWLock

            store = IndexStore(index, folder, RWLock(), threading.Lock())
        next_id = size
        for batch in [int(b) for b in args.batches.split(",")]:
            lat, written, grown = [], [], []
            for _ in range(args.repeat):
                metas, img, cap, feats = rows(next_id, batch)
                next_id += batch
                size0, w0 = folder_size(folder), write_bytes()
                t0 = time.perf_counter()
                if store is not None:
                    store.add(metas, img, list(cap), feats)
                else:
                    index.add(metas, img, cap)
                    index.save(folder)
                lat.append(time.perf_counter() - t0)
                written.append(write_bytes() - w0)
                grown.append(folder_size(folder) - size0)
            print(
                json.dumps(
                    {
                        "code": "after" if new else "before",
                        "size": size,
                        "batch": batch,
                        "repeat": args.repeat,
                        "p50_ms": 1e3 * statistics.median(lat),
                        "p99_ms": 1e3 * float(np.percentile(lat, 99)),
                        "max_ms": 1e3 * max(lat),
                        "written_bytes_median": int(statistics.median(written)),
                        "folder_growth_median": int(statistics.median(grown)),
                        "build_seconds": round(build, 2),
                        "save_seconds": round(save, 2),
                        "folder_bytes": folder_size(folder),
                        "features": new and args.feature_dim > 0,
                    }
                ),
                flush=True,
            )
        if store is not None:
            t0 = time.perf_counter()
            store.snapshot()
            print(
                json.dumps(
                    {"code": "after", "size": size, "snapshot_seconds": round(time.perf_counter() - t0, 2)}
                ),
                flush=True,
            )
            store.close()
        del index, store
        shutil.rmtree(folder, ignore_errors=True)
        os.sync()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
