"""Latency of Tag and Caption over gRPC against a running server, one client, real images.

    python -m xlsearch_bench.annotate --target 127.0.0.1:50051 --images /usr/share/tuxpaint/stamps/animals \
        --count 40 --repeat 3 --out runs/loadbench/annotate.json

Every image is sent as bytes (so each call decodes and encodes it; nothing is cached for these RPCs). Prints one row
per call kind: p50 / p95 / p99 over count x repeat calls, after one unrecorded warm-up call of each kind.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from xlsearch.v1 import search_pb2 as pb
from xlsearch.v1 import search_pb2_grpc as pb_grpc
from xlsearch_bench.machine import machine_info
from xlsearch_bench.report import summary_ms, table, write_json


def calls(stub: Any, timeout: float) -> dict[str, Callable[[bytes], Any]]:
    def ref(data: bytes) -> pb.ImageRef:
        return pb.ImageRef(image_bytes=data)

    return {
        "Tag (k = LQP)": lambda b: stub.Tag(pb.TagRequest(image=ref(b)), timeout=timeout),
        "Caption (n_best 1, beam 3)": lambda b: stub.Caption(
            pb.CaptionRequest(image=ref(b)), timeout=timeout
        ),
        "Caption (n_best 3, + recommend)": lambda b: stub.Caption(
            pb.CaptionRequest(image=ref(b), n_best=3, recommend=True), timeout=timeout
        ),
    }


def run(target: str, images: Sequence[bytes], repeat: int, timeout: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "target": target,
        "images": len(images),
        "repeat": repeat,
        "machine": machine_info(),
    }
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.ImageSearchStub(channel)
        for name, call in calls(stub, timeout).items():
            call(images[0])  # warm-up: lazy component loading, recommendation pool encoding
            seconds = []
            for _ in range(repeat):
                for data in images:
                    t0 = time.perf_counter()
                    call(data)
                    seconds.append(time.perf_counter() - t0)
            out[name] = summary_ms(seconds)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument(
        "--images", required=True, help="folder of images (searched recursively for *.png, *.jpg)"
    )
    ap.add_argument("--count", type=int, default=40, help="images used (the first by path)")
    ap.add_argument("--max-bytes", type=int, default=4 << 20, help="skip larger files")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rpc-timeout", type=float, default=60.0)
    ap.add_argument("--out", help="write the JSON result here")
    args = ap.parse_args(argv)
    files = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    images = [p.read_bytes() for p in files if p.stat().st_size <= args.max_bytes][: args.count]
    if not images:
        raise SystemExit(f"annotate_bench: no images under {args.images}")
    result = run(args.target, images, args.repeat, args.rpc_timeout)
    rows = [
        [name, v["n"], f"{v['p50']:.1f}", f"{v['p95']:.1f}", f"{v['p99']:.1f}"]
        for name, v in result.items()
        if isinstance(v, dict) and "p50" in v
    ]
    print(table(["call", "n", "p50 ms", "p95 ms", "p99 ms"], rows))
    if args.out:
        write_json(Path(args.out), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
