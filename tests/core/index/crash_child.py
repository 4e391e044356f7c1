"""The process the crash tests kill (``test_durability.py``): changes an index folder through ``IndexStore`` and prints
``ack add N`` / ``ack del N`` after each change returns (what a server would acknowledge). ``--fault`` makes it
stop inside one step (half a record written, a snapshot half written, between the two renames of the swap, in the
middle of a replay, after a delete returned but before its acknowledgement) and print ``at-fault`` there, so the
test's kill -9 lands exactly in that step.

Image N has deterministic vectors (``vectors(N)``), so the test can check every image it finds."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import numpy as np

from xlsearch.index.image_index import BundleKey, ImageIndex, ImageMeta
from xlsearch.index.store import IndexStore
from xlsearch.search.locks import RWLock

DIM, CL_DIM, FEAT = 32, 16, 8
KEY = BundleKey("bundle-crash", DIM, "sentence", CL_DIM, feature_dim=FEAT)


def vectors(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n)
    out = []
    for d in (DIM, CL_DIM, FEAT):
        x = rng.standard_normal(d).astype(np.float32)
        out.append(x / np.linalg.norm(x))
    return out[0], out[1], out[2]


def meta(n: int) -> ImageMeta:
    caps = () if n % 4 == 3 else (f"caption {n}",)
    return ImageMeta(f"img-{n}", f"/images/{n}.png", caps, ("even" if n % 2 == 0 else "odd",))


def hang(what: str) -> None:
    print(f"at-fault {what}", flush=True)
    time.sleep(3600)


def install_fault(fault: str, after: int) -> None:
    """Stop inside one step, once ``after`` changes went through (the test kills the process there)."""
    import xlsearch.common.atomic as atomic
    import xlsearch.index.changelog as changelog
    import xlsearch.index.features as features

    calls = {"n": 0}
    if fault == "append":
        original = changelog.ChangeLog.append

        def torn(self, seq, payload):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] <= after:
                return original(self, seq, payload)
            frame = changelog._FRAME.pack(len(payload), changelog._crc(seq, payload), seq) + payload
            self._fh.write(frame[: len(frame) // 2])  # half a record reaches the disk
            self._fh.flush()
            os.fsync(self._fh.fileno())
            hang("append")

        changelog.ChangeLog.append = torn
    elif fault == "snapshot":
        original_write = features.FeatureStore.write

        def half(self, frozen, folder):  # type: ignore[no-untyped-def]
            original_write(self, frozen, folder)  # tables and features written, metadata and manifest not yet
            hang("snapshot")

        features.FeatureStore.write = half
    elif fault == "swap":
        original_rename = os.rename

        def rename(src, dst):  # type: ignore[no-untyped-def]
            original_rename(src, dst)
            if ".old-" in str(dst):  # the live folder moved aside, the new one not yet in place
                hang("swap")

        atomic.os.rename = rename  # type: ignore[attr-defined]
    elif fault == "carry":
        original_copy = changelog.ChangeLog.copy_after

        def copy(self, seq, dest):  # type: ignore[no-untyped-def]
            n = original_copy(self, seq, dest)
            hang("carry")
            return n

        changelog.ChangeLog.copy_after = copy
    elif fault == "replay":
        original_apply = ImageIndex.apply

        def apply(self, change):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            original_apply(self, change)
            if calls["n"] == after:
                hang("replay")

        ImageIndex.apply = apply


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--count", type=int, default=10**9)
    ap.add_argument("--factory", default="IDMap,Flat")
    ap.add_argument("--fault", default="")
    ap.add_argument("--after", type=int, default=0)
    ap.add_argument("--snapshot-bytes", type=int, default=4096)
    args = ap.parse_args()
    if args.fault:
        install_fault(args.fault, args.after)
    folder = args.folder
    index = (
        ImageIndex.load(folder, KEY)
        if os.path.exists(os.path.join(folder, "manifest.json"))
        else ImageIndex.create(KEY, args.factory)
    )
    print(f"loaded {index.count} {index.version}", flush=True)
    if args.fault == "replay":
        return 0
    rw, writes = RWLock(), threading.Lock()
    store = IndexStore(
        index, folder, rw, writes, snapshot_min_bytes=args.snapshot_bytes, snapshot_fraction=0.0
    )
    if args.fault in ("snapshot", "swap", "carry"):
        store.background = False  # the snapshot runs in the changing thread: the fault stops this process
    deletes = 0
    for n in range(args.start, args.start + args.count):
        img, cap, feat = vectors(n)
        m = meta(n)
        store.add([m], img[None], [cap if m.has_caption else None], feat[None])
        print(f"ack add {n}", flush=True)
        if n % 5 == 4 and n >= 3:  # now and then a delete of an earlier image
            store.remove([f"img-{n - 3}"])
            deletes += 1
            if args.fault == "unacked-delete" and deletes == args.after:
                hang("unacked-delete")  # logged and applied, never acknowledged
            print(f"ack del {n - 3}", flush=True)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
