"""The command line of the load and scale benchmarks of the search service (``xlsearch loadbench``, or
``python -m xlsearch_bench``): the parser and ``main(argv)``. It measures and reports; it asserts nothing.

    python -m xlsearch_bench grpc  --bundle B --index I --manifest data/tuxpaint --concurrency 1,8
    python -m xlsearch_bench scale --bundle B --index I --manifest data/tuxpaint --sizes real 100k 1m

``grpc``: starts a real server (``python -m xlsearch_server.cli`` as a subprocess on 127.0.0.1 with a free port, so
the clients never share a GIL with it) or targets one (``--target``), then runs N concurrent clients (threads, one
channel each) for a fixed number of requests each, bounded by ``--duration`` seconds per level. Queries are the
manifest's Chinese sentences (or ``--queries-file``), shuffled with ``--seed``. Reports QPS and p50/p95/p99 latency
and where the time goes: the per-stage timings each SearchResponse carries, the server's ``xlsearch_stage_seconds``
histogram (scraped before/after each level), the time spent in the server outside any stage (waiting for a worker
thread, the event loop), the transport (client latency minus the server's ``total_seconds``) and the server's CPU
time per request (from ``/proc``). Several server configurations (``--server-config``) run interleaved over
``--repeat`` rounds, so a drifting background load hits every configuration alike; the summary is the median over
rounds. The result cache is off by default (``--cache-ttl-seconds 0``), so every request is computed.

``scale``: index sizes ``real`` (the index folder given, e.g. the 772 Tux Paint images) and synthetic scale-ups
(``100k``, ``1m``): the real (image, caption) vectors first, then synthetic ones from a seeded joint Gaussian
mixture (see ``synthetic.Synthetic``). For each factory (exact ``IDMap,Flat``, ``HNSW32`` with an ``--ef-search`` sweep,
``IVF{nlist},Flat`` / ``IVF{nlist},PQ32`` with an ``--nprobe`` sweep) it reports build time, memory, single-client
latency of the engine's full CLM search (``SearchEngine.search``: query encoding + both tables + exact fusion) and
recall@10 of the final CLM top-10 against brute force over all vectors (also per table). Query vectors are the
bundle's real encodings of the Chinese queries.

Writes JSON (``--out``) and prints tables.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from xlsearch_bench.report import write_json
from xlsearch_bench.server_process import ServerConfig

DEFAULT_FACTORIES = ("IDMap,Flat", "HNSW32", "IVF{nlist},Flat", "IVF{nlist},PQ32")


def parse_size(text: str) -> int | str:
    t = text.strip().lower()
    if t == "real":
        return "real"
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([km]?)", t)
    if not m:
        raise argparse.ArgumentTypeError(f"size {text!r}: use real, 5000, 100k, 1m")
    return int(float(m[1]) * {"": 1, "k": 1_000, "m": 1_000_000}[m[2]])


def int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers")
    return values


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="xlsearch loadbench",
        description="Load (gRPC) and scale (index size) benchmarks of xlsearch search.",
    )
    sub = ap.add_subparsers(dest="mode", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--manifest", help="queries: the manifest's Chinese (zh) sentences")
        p.add_argument("--queries-file", help="queries: one per line (added to the manifest's)")
        p.add_argument(
            "--queries", type=int, default=0, help="use at most this many distinct queries (0: all)"
        )
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--top-k", type=int, default=10)
        p.add_argument("--out", help="write the JSON results here")

    g = sub.add_parser(
        "grpc", help="concurrent gRPC clients against a real server: QPS, latency, stage breakdown"
    )
    common(g)
    g.add_argument("--bundle", help="bundle folder (to start a server)")
    g.add_argument("--index", help="index folder (to start a server)")
    g.add_argument("--target", help="host:port of a running server instead of starting one")
    g.add_argument("--metrics-url", help="with --target: its Prometheus /metrics URL")
    g.add_argument("--concurrency", type=int_list, default=[1, 8], help="client counts, e.g. 1,8 (default)")
    g.add_argument("--requests", type=int, default=200, help="Searches per client per level")
    g.add_argument("--duration", type=float, default=30.0, help="at most this many seconds per level")
    g.add_argument("--warmup", type=int, default=2, help="unrecorded Searches per client before each level")
    g.add_argument(
        "--repeat", type=int, default=1, help="rounds over every config and level (median reported)"
    )
    g.add_argument("--search-mode", default="CLM", choices=["CL", "CM", "CLM"])
    g.add_argument("--rpc-timeout", type=float, default=30.0)
    g.add_argument(
        "--cache-ttl-seconds",
        type=float,
        default=0.0,
        help="server result/embedding cache TTL (0: off, default)",
    )
    g.add_argument(
        "--server-config",
        type=ServerConfig.parse,
        action="append",
        help="name:key=value,... (repeatable): server settings (onnx_threads=1) and UPPERCASE env vars "
        "(OMP_NUM_THREADS=1); each config gets its own server, all run interleaved",
    )
    g.add_argument("--start-timeout", type=float, default=180.0)
    g.add_argument(
        "--with-writers",
        type=int,
        default=0,
        metavar="N",
        help="also measure every level under N concurrent AddImages+DeleteImages streams (interleaved with idle)",
    )
    g.add_argument(
        "--writer-images", type=int, default=300, help="images per AddImages call of the write load"
    )

    s = sub.add_parser("scale", help="index size x factory: build time, memory, latency, recall@k vs exact")
    common(s)
    s.add_argument("--bundle", required=True)
    s.add_argument(
        "--index", required=True, help="the real index folder (its vectors seed the synthetic ones)"
    )
    s.add_argument("--sizes", type=parse_size, nargs="+", default=["real", 100_000, 1_000_000])
    s.add_argument(
        "--factories",
        nargs="+",
        default=list(DEFAULT_FACTORIES),
        help="ImageIndex factories; {nlist} = min(auto_nlist(n), --nlist-max)",
    )
    s.add_argument("--nlist-max", type=int, default=1024)
    s.add_argument("--ef-search", type=int_list, default=[64, 128, 256], help="HNSW efSearch values")
    s.add_argument("--nprobe", type=int_list, default=[16, 64], help="IVF nprobe values")
    s.add_argument(
        "--hnsw-ef-construction", type=int, default=None, help="HNSW efConstruction (faiss default 40)"
    )
    s.add_argument("--spread", type=float, default=0.5, help="synthetic noise scale (x real covariance)")
    s.add_argument("--rank", type=int, default=256, help="principal directions of the synthetic noise")
    s.add_argument("--chunk", type=int, default=50_000, help="rows per add / generation batch")
    s.add_argument("--train-rows", type=int, default=100_000, help="rows in the first add (IVF training set)")
    s.add_argument("--max-seconds", type=float, default=60.0, help="latency budget per factory setting")
    s.add_argument("--warmup", type=int, default=3)
    s.add_argument("--save", help="save every built index under this folder (to serve it: grpc --index ...)")
    s.add_argument(
        "--reuse", action="store_true", help="load an index already saved under --save instead of building it"
    )
    s.add_argument(
        "--onnx-threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all)"
    )
    s.add_argument("--search-threads", type=int, default=None, help="faiss OpenMP threads while searching")
    s.add_argument("--build-threads", type=int, default=None, help="faiss OpenMP threads while building")
    s.add_argument("--e5-threads", type=int, default=None, help="OpenMP threads of the e5 sentence encoder")
    s.add_argument(
        "--pq-polysemous",
        choices=["faiss-default", "off"],
        default="faiss-default",
        help="off: build IVF-PQ without faiss' polysemous training "
        "(what-if for a proposed xlsearch/index/table.py change)",
    )
    s.add_argument(
        "--memory-fraction",
        type=float,
        default=0.7,
        help="skip a build estimated above this share of free RAM",
    )
    a = sub.add_parser(
        "adds", help="AddImages persistence: latency and bytes written per add vs index size, before vs after"
    )
    a.add_argument("--sizes", type=parse_size, nargs="+", default=[10_000, 100_000, 1_000_000])
    a.add_argument("--batches", type=int_list, default=[1, 100], help="images per add")
    a.add_argument("--repeat", type=int, default=10, help="adds per size and batch")
    a.add_argument("--repeat-1m-before", type=int, default=3, help="adds at 1M for the old code (slow)")
    a.add_argument(
        "--feature-dim", type=int, default=1280, help="backbone feature width (this code stores it)"
    )
    a.add_argument("--factory", default="IDMap,Flat")
    a.add_argument("--before-code-root", help="a checkout of the old code (e.g. /work/base) to run beside")
    a.add_argument("--work", help="scratch folder (default: a temp folder)")
    a.add_argument("--out", help="write the JSON results here")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.mode != "adds" and not (args.manifest or args.queries_file):
        print("xlsearch loadbench: error: give --manifest or --queries-file for the queries", file=sys.stderr)
        return 2
    if args.mode == "grpc" and not args.target and not (args.bundle and args.index):
        print("xlsearch loadbench: error: grpc needs --bundle and --index, or --target", file=sys.stderr)
        return 2
    # imported here, so `xlsearch loadbench -h` loads neither faiss nor the engine
    if args.mode == "grpc":
        from xlsearch_bench.grpc_load import run_grpc as run
        from xlsearch_bench.grpc_tables import grpc_tables as render
    elif args.mode == "adds":
        from xlsearch_bench.adds import adds_tables as render
        from xlsearch_bench.adds import run_adds as run
    else:
        from xlsearch_bench.scale import run_scale as run
        from xlsearch_bench.scale_tables import scale_tables as render
    try:
        result = run(args)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"xlsearch loadbench: error: {e}", file=sys.stderr)
        return 1
    result["argv"] = list(sys.argv[1:] if argv is None else argv)
    if args.out:
        write_json(Path(args.out), result)
    print(render(result))
    if args.out:
        print(f"\nwrote {args.out}")
    return 0
