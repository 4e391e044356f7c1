"""A real server for a benchmark: ``python -m xlsearch_server.cli`` in a subprocess on 127.0.0.1 (so the benchmark's
clients never share a GIL with it), its gRPC and metrics ports read from its log, ready once its health says
SERVING. ``ServerConfig`` names one configuration (``--server-config name:key=value,...``)."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20


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
    """``python -m xlsearch_server.cli`` on 127.0.0.1 with free gRPC and metrics ports (read from its log).

    ``cache_ttl`` None leaves the server's cache setting alone; ``metrics_port=none`` in the config's settings
    serves no metrics (then only the gRPC port is awaited); ``extra_args`` are appended to the command line;
    ``max_address_space_mib`` (> 0) caps the server's address space (RLIMIT_AS), so a request that explodes
    fails in the server instead of taking the machine."""

    def __init__(
        self,
        bundle: Path,
        index: Path,
        config: ServerConfig,
        workdir: Path,
        cache_ttl: float | None,
        *,
        extra_args: Sequence[str] = (),
        max_address_space_mib: int = 0,
    ):
        self.bundle, self.index, self.config, self.workdir, self.cache_ttl = (
            bundle,
            index,
            config,
            workdir,
            cache_ttl,
        )
        self.extra_args, self.max_address_space_mib = list(extra_args), max_address_space_mib
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

    @property
    def serves_metrics(self) -> bool:
        return self.config.settings.get("metrics_port", "0").strip().lower() not in ("none", "")

    def argv(self) -> list[str]:
        command = self.config.settings.get("command")
        argv = [
            *(shlex.split(command) if command else [sys.executable, "-m", "xlsearch_server.cli"]),
            "--bundle",
            str(self.bundle),
            "--index",
            str(self.index),
        ]
        settings = {"host": "127.0.0.1", "port": "0", "metrics_port": "0", "http_port": "0"}
        if self.cache_ttl is not None:
            settings["cache_ttl_seconds"] = str(self.cache_ttl)
        settings.update({k: v for k, v in self.config.settings.items() if k != "command"})
        for key, value in settings.items():
            if value == "":  # `key=` in a config drops the flag (e.g. one an older server does not know)
                continue
            argv += [f"--{key.replace('_', '-')}", value]
        return argv + self.extra_args

    def _limit(self) -> None:  # in the child, before exec
        limit = self.max_address_space_mib * MiB
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def start(self, timeout: float = 180.0) -> None:
        env = {**os.environ, **self.config.env}
        env.pop("XLSEARCH_CONFIG", None)  # the benchmark's flags define the server, not a stray config file
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=self._limit if self.max_address_space_mib > 0 else None,
            )
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
            ports = self.port and (self.metrics_port or not self.serves_metrics)
            if ports and wait_serving(self.target, 0.5):
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
