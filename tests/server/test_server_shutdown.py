"""`xlsearch serve` as a real subprocess: SIGTERM drains in-flight calls and exits 0; a mismatched bundle/index pair
and bad settings exit 2 with a clear message; the serving entry points never import torch."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_support import ServedPair, session_pair

from xlsearch.v1 import search_pb2 as pb
from xlsearch.v1 import search_pb2_grpc as pb_grpc

TESTS = Path(__file__).resolve().parents[1]  # where server_support.py lives
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
SERVING = health_pb2.HealthCheckResponse.SERVING


def serve_args(bundle: Path, index: Path, *extra: str) -> list[str]:
    """`xlsearch serve` of a bundle and index on free ports (gRPC, metrics, HTTP), one ONNX thread."""
    return ["-m", "xlsearch_server.cli", "--bundle", str(bundle), "--index", str(index), "--port", "0"] + [
        "--metrics-port",
        "0",
        "--http-port",
        "0",
        "--onnx-threads",
        "1",
        *extra,
    ]


class ServerProcess:
    """A server subprocess whose stderr is read line by line in a thread."""

    def __init__(self, args: list[str]) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
        env = {k: v for k, v in env.items() if not k.startswith("XLSEARCH_")}
        self.proc = subprocess.Popen(
            [sys.executable, *args], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            self.lines.put(line)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            if m := pattern.search(line):
                return m
        raise AssertionError(f"{pattern.pattern!r} never logged; log:\n{''.join(self.log)}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def wait_serving(address: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING:
                return
            time.sleep(0.05)
    raise AssertionError("server never became SERVING")


SCRIPTED_SERVER = """
import asyncio, sys
from server_support import ScriptedEngine
from xlsearch_server.cli import configure_logging, parse_settings, serve
settings = parse_settings(sys.argv[1:])
configure_logging(settings)
sys.exit(asyncio.run(serve(settings, engine_loader=lambda s: ScriptedEngine(search_seconds=1.0))))
"""


def test_sigterm_finishes_the_in_flight_call_then_exits_zero():
    server = ServerProcess(
        [
            "-c",
            SCRIPTED_SERVER,
            "--port",
            "0",
            "--metrics-port",
            "none",
            "--http-port",
            "0",
            "--grace-seconds",
            "5",
        ]
    )
    try:
        address = f"127.0.0.1:{server.wait_for(LISTENING).group(1)}"
        wait_serving(address)
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.ImageSearchStub(channel)
            future = stub.Search.future(pb.SearchRequest(query="一只猫", top_k=2), timeout=10)
            time.sleep(0.3)  # the call is running in the server
            t0 = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            assert len(future.result().hits) == 2  # finished, not cut off
            assert server.proc.wait(10) == 0
            assert time.monotonic() - t0 < 5
        assert any("shutting down" in line for line in server.log)
    finally:
        server.kill()


@pytest.fixture(scope="session")
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ServedPair:
    return session_pair(request, tmp_path_factory)


def test_xlsearch_serve_with_a_real_bundle_serves_then_exits_on_sigterm(pair: ServedPair, tmp_path: Path):
    index = pair.index_copy(tmp_path)
    server = ServerProcess(serve_args(pair.bundle, index))
    try:
        address = f"127.0.0.1:{server.wait_for(LISTENING).group(1)}"
        wait_serving(address)
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.ImageSearchStub(channel)
            assert len(stub.Search(pb.SearchRequest(query="一只猫", top_k=3), timeout=30).hits) == 3
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(15) == 0
    finally:
        server.kill()


def fake_pair(tmp_path: Path, index_bundle_hash: str) -> tuple[Path, Path]:
    bundle, index = tmp_path / "bundle", tmp_path / "index"
    bundle.mkdir()
    index.mkdir()
    image = {"file": "image_encoder.onnx", "dim": 8, "preprocess": {}}
    bundle_manifest = {"format": "xlsearch-bundle/1", "content_hash": "a" * 64, "dim": 8, "cl_dim": 8}
    bundle_manifest.update(image_encoder=image, text_encoders={}, files={})
    (bundle / "manifest.json").write_text(json.dumps(bundle_manifest))
    index_manifest = {"format": "xlsearch-index/1", "bundle_hash": index_bundle_hash, "dim": 8, "cl_dim": 8}
    (index / "manifest.json").write_text(json.dumps({**index_manifest, "cl_space": "visual"}))
    return bundle, index


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XLSEARCH_")}
    return subprocess.run(
        [sys.executable, "-m", "xlsearch_server.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_mismatched_bundle_and_index_exit_2_before_binding(tmp_path: Path):
    bundle, index = fake_pair(tmp_path, index_bundle_hash="c" * 64)
    done = run_cli("--bundle", str(bundle), "--index", str(index), "--port", "0", "--metrics-port", "none")
    assert done.returncode == 2
    assert "was built with bundle cccccccccccc" in done.stderr and "rebuild the index" in done.stderr
    assert "listening" not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-top-k", "5", "--default-top-k", "10"], "default_top_k"),
        (["--port", "not-a-port"], "port"),
        (["--config", "/nonexistent/xlsearch.toml"], "cannot read config file"),
        ([], "both a bundle"),
    ],
)
def test_bad_settings_exit_2_with_a_message(args: list[str], message: str):
    done = run_cli(*args)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_settings_precedence_flags_over_env_over_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from xlsearch_server.cli import parse_settings

    config = tmp_path / "serve.toml"
    config.write_text(
        'port = 6000\nmax_top_k = 50\n[server]\ncache_ttl_seconds = 12.5\nredis_url = "redis://x"\n'
    )
    for name in list(os.environ):
        if name.startswith("XLSEARCH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XLSEARCH_CONFIG", str(config))
    monkeypatch.setenv("XLSEARCH_MAX_TOP_K", "40")
    monkeypatch.setenv("XLSEARCH_PORT", "7000")
    s = parse_settings(["--port", "8000", "--metrics-port", "none", "--redis-url", "none"])
    assert (s.port, s.max_top_k, s.cache_ttl_seconds) == (8000, 40, 12.5)  # flag, env, file
    assert s.metrics_port is None and s.redis_url is None and s.cache_backend == "memory"
    json_config = tmp_path / "serve.json"
    json_config.write_text(json.dumps({"default_top_k": 3}))
    assert parse_settings(["--config", str(json_config)]).default_top_k == 3


def test_serving_entry_points_do_not_import_torch():
    code = (
        "import sys\n"
        "import xlsearch_server.cli, xlsearch_server.app, xlsearch_server.service.loading\n"
        "import xlsearch.search.engine, xlsearch.index.image_index, xlsearch.bundle.runtime\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
