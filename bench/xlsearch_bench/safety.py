"""Peak server memory per hostile image request (issue 10: "safe to expose"). Torch-free.

For each probe a fresh `xlsearch serve` (python -m xlsearch_server.cli) starts in a subprocess on a free loopback
port with a copy of the index (AddImages changes it); once it reports SERVING, the probe's peak resident set is
read from /proc/<pid>/status: its high-water mark is reset first (/proc/<pid>/clear_refs), so the figure is the
peak above the loaded, warmed-up server, not the load itself. Probes: Tag with a 1x1000 PNG (81 bytes), Tag with a
1x4000 PNG, Tag with a 30000x30000 PNG decompression bomb (107 KB), Tag with a 9000x9000 1-bit PNG, and one
AddImages stream of eight such PNGs (10 KB each here: zlib level 9; PIL writes the same pixels in 21 KB). The
server gets an address-space limit (--max-server-mib) so a probe that explodes fails instead of taking the machine.
The server is started and stopped by ``server_process.ServerProcess`` (metrics off, the cache setting left alone).

    python -m xlsearch_bench.safety --bundle B --index I --out safety.json
    # the code before: an older checkout's server (absolute B and I: the server runs in that checkout)
    python -m xlsearch_bench.safety --bundle B --index I --server-command "env -C /old python -m xlsearch.server.cli"

The script imports nothing from the core but the generated protobuf modules, so the server it measures may be
older code.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from xlsearch.v1 import search_pb2 as pb
from xlsearch.v1 import search_pb2_grpc as pb_grpc
from xlsearch_bench.machine import proc_status, reset_peak
from xlsearch_bench.report import write_json
from xlsearch_bench.server_process import ServerConfig, ServerProcess

MiB = 1 << 20


# -- images -------------------------------------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, bit_depth: int = 8, grey: int = 128) -> bytes:
    """A valid greyscale PNG of one value (1- or 8-bit), written row by row: never held as pixels here."""
    row_bytes = (width * bit_depth + 7) // 8
    row = b"\x00" + bytes([grey if bit_depth == 8 else 0]) * row_bytes
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def tiny_png() -> bytes:
    """A small valid image to warm the decode path before measuring (first-call allocations)."""
    return png(64, 48)


# -- probes -------------------------------------------------------------------------------------------------------
Probe = tuple[str, Callable[[], list[bytes]], str]  # name, images, rpc ("tag" | "add")

PROBES: list[Probe] = [
    ("Tag 1x1000 PNG", lambda: [png(1, 1000)], "tag"),
    ("Tag 1x4000 PNG", lambda: [png(1, 4000)], "tag"),
    ("Tag 30000x30000 PNG bomb", lambda: [png(30000, 30000, bit_depth=1)], "tag"),
    ("Tag 9000x9000 1-bit PNG", lambda: [png(9000, 9000, bit_depth=1)], "tag"),
    ("AddImages 8 x 9000x9000 1-bit PNG", lambda: [png(9000, 9000, bit_depth=1)] * 8, "add"),
]


def call(stub: Any, rpc: str, images: list[bytes], timeout: float) -> tuple[str, str]:
    try:
        if rpc == "tag":
            stub.Tag(pb.TagRequest(image=pb.ImageRef(image_bytes=images[0]), k=3), timeout=timeout)
        else:
            stub.AddImages(
                (pb.AddImageRequest(image_bytes=d, id=f"safety-bench/{n}") for n, d in enumerate(images)),
                timeout=timeout,
            )
    except grpc.RpcError as e:
        return e.code().name, e.details() or ""
    return "OK", ""


def run_probe(probe: Probe, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    name, make, rpc = probe
    images = make()
    index = work / "index"
    shutil.rmtree(index, ignore_errors=True)
    shutil.copytree(args.index, index)  # AddImages changes (and saves) the index it serves
    settings = {"metrics_port": "none", **({"command": args.server_command} if args.server_command else {})}
    server = ServerProcess(
        args.bundle,
        index,
        ServerConfig("safety", settings),
        work,
        cache_ttl=None,
        extra_args=args.server_arg,
        max_address_space_mib=args.max_server_mib,
    )
    try:
        server.start(args.start_timeout)
        assert server.proc is not None
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.ImageSearchStub(channel)
            warm = call(stub, "tag", [tiny_png()], args.timeout)  # first-call allocations are not the probe's
            pid = server.proc.pid
            reset = reset_peak(pid)
            before = proc_status(pid)
            t0 = time.perf_counter()
            status, details = call(stub, rpc, images, args.timeout)
            seconds = time.perf_counter() - t0
            alive = server.proc.poll() is None
            after = proc_status(pid) if alive else {}
    finally:
        server.stop()
    base = before["VmRSS"] if reset else before["VmHWM"]
    return {
        "probe": name,
        "rpc": rpc,
        "images": len(images),
        "request_bytes": sum(len(d) for d in images),
        "status": status if alive else "SERVER DIED",
        "details": details[:300],
        "warmup_status": warm[0],
        "rss_before_mib": round(before["VmRSS"] / MiB, 1),
        "vm_size_before_mib": round(before["VmSize"] / MiB, 1),
        "peak_mib": round(after["VmHWM"] / MiB, 1) if alive else None,
        "peak_growth_mib": round((after["VmHWM"] - base) / MiB, 1) if alive else None,
        "peak_reset": reset,
        "seconds": round(seconds, 2),
    }


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| probe | request bytes | status | RSS before (MiB) | peak growth (MiB) | seconds |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in results:
        growth = "-" if r["peak_growth_mib"] is None else f"{r['peak_growth_mib']:.0f}"
        lines.append(
            f"| {r['probe']} | {r['request_bytes']:,} | {r['status']} | {r['rss_before_mib']:.0f} | {growth} "
            f"| {r['seconds']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xlsearch_bench.safety", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--index", type=Path, required=True, help="copied for every probe; never modified")
    p.add_argument("--out", type=Path, help="write the results as JSON")
    p.add_argument("--probes", help="comma-separated probe numbers (1-based) to run, default all")
    p.add_argument("--timeout", type=float, default=600, help="seconds per probe call")
    p.add_argument("--start-timeout", type=float, default=300, help="seconds for the server to start")
    p.add_argument(
        "--max-server-mib", type=int, default=8192, help="server address-space limit (RLIMIT_AS; 0 = none)"
    )
    p.add_argument("--server-arg", action="append", default=[], help="extra `xlsearch serve` argument")
    p.add_argument(
        "--server-command",
        help="the server command instead of `python -m xlsearch_server.cli`, e.g. an older checkout's",
    )
    args = p.parse_args(argv)
    for folder in (args.bundle, args.index):
        if not (folder / "manifest.json").is_file():
            p.error(f"{folder}: no manifest.json")
    chosen = PROBES
    if args.probes:
        chosen = [PROBES[int(i) - 1] for i in args.probes.split(",")]
    import xlsearch

    code = str(Path(xlsearch.__file__).resolve().parent.parent)
    print(f"code: {code}  bundle: {args.bundle}  index: {args.index}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="safety-bench-") as tmp:
        for probe in chosen:
            print(f"  {probe[0]} ...", end=" ", flush=True)
            r = run_probe(probe, args, Path(tmp))
            print(f"{r['status']}, peak +{r['peak_growth_mib']} MiB, {r['seconds']} s", flush=True)
            results.append(r)
    print(markdown(results))
    if any(r["warmup_status"] != "OK" for r in results):
        print("warning: a warm-up Tag failed (a bundle without a tagger answers Tag before decoding)")
    if args.out:
        report = {
            "code": code,
            "bundle": str(args.bundle),
            "index": str(args.index),
            "python": platform.python_version(),
            "max_server_mib": args.max_server_mib,
            **({"server_command": args.server_command} if args.server_command else {}),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "results": results,
        }
        write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
