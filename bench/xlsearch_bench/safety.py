"""Peak server memory per hostile image request (issue 10: "safe to expose"). Torch-free.

For each probe a fresh `xlsearch serve` (python -m xlsearch_server.cli) starts in a subprocess on a free loopback
port with a copy of the index (AddImages changes it); once it reports SERVING, the probe's peak resident set is
read from /proc/<pid>/status: its high-water mark is reset first (/proc/<pid>/clear_refs), so the figure is the
peak above the loaded, warmed-up server, not the load itself. Probes: Tag with a 1x1000 PNG (81 bytes), Tag with a
1x4000 PNG, Tag with a 30000x30000 PNG decompression bomb (107 KB), Tag with a 9000x9000 1-bit PNG, and one
AddImages stream of eight such PNGs (10 KB each here: zlib level 9; PIL writes the same pixels in 21 KB). The server gets an address-space limit (--max-server-mib) so a probe that explodes fails instead of
taking the machine.

    python -m xlsearch_bench.safety --bundle B --index I --out safety.json
    PYTHONPATH=/path/to/old/checkout python xlsearch/safety_bench.py --bundle B --index I   # the code before

The script imports nothing from xlsearch but the generated protobuf modules, so it runs against older code too.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from xlsearch.v1 import search_pb2 as pb
from xlsearch.v1 import search_pb2_grpc as pb_grpc

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


# -- the server process ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, VmSize of a process, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "VmSize"):
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Server:
    """`xlsearch serve` in a subprocess on 127.0.0.1:<free port>; the environment (PYTHONPATH) is inherited."""

    def __init__(self, bundle: Path, index: Path, log: Path, max_mib: int, extra: list[str]) -> None:
        self.port = free_port()
        argv = [sys.executable, "-m", "xlsearch_server.cli", "--bundle", str(bundle), "--index", str(index)]
        argv += ["--host", "127.0.0.1", "--port", str(self.port), "--metrics-port", "none", *extra]

        def limit() -> None:
            if max_mib > 0:
                resource.setrlimit(resource.RLIMIT_AS, (max_mib * MiB, max_mib * MiB))

        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=limit)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def wait_serving(self, timeout: float) -> None:
        health = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with status {self.proc.returncode} (see {self.log.name})")
            try:
                status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"server not SERVING after {timeout:.0f} s (see {self.log.name})")

    def stop(self) -> None:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def run_probe(probe: Probe, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    name, make, rpc = probe
    images = make()
    index = work / "index"
    shutil.rmtree(index, ignore_errors=True)
    shutil.copytree(args.index, index)  # AddImages changes (and saves) the index it serves
    server = Server(args.bundle, index, work / "server.log", args.max_server_mib, args.server_arg)
    try:
        server.wait_serving(args.start_timeout)
        stub = pb_grpc.ImageSearchStub(server.channel)
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
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "results": results,
        }
        args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
