"""Helpers for the server tests: a real redis-server on a free loopback port, a SearchServer running in a background
event loop, and a scripted engine for the cases that need control over timing (slow loads, slow searches)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from xlsearch.common.timing import StageTimer
from xlsearch.errors import NotFound
from xlsearch.index.image_index import ImageMeta
from xlsearch.search.errors import ComponentMissing
from xlsearch.search.types import (
    STAGES,
    Annotation,
    CaptionRequest,
    Deleted,
    Hit,
    Limits,
    NewImage,
    QueryVectors,
    SearchRequest,
    SearchResult,
    Stats,
    TagRequest,
)
from xlsearch_server.app import SearchServer
from xlsearch_server.settings import ServerSettings

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """redis-server on 127.0.0.1:<free port>, no persistence. stop()/start() keep the port (kill + restart)."""

    def __init__(self, workdir: Path) -> None:
        assert REDIS_SERVER is not None
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


async def _cancel_pending() -> None:
    """Cancel every other task of the running loop and wait for them to end."""
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    for t in tasks:
        t.cancel()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)


class ServerThread:
    """A SearchServer on its own event loop in a daemon thread; tests talk to it with the sync gRPC client."""

    def __init__(
        self,
        settings: ServerSettings,
        engine_loader: Callable[[ServerSettings], Any] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        kwargs: dict[str, Any] = {"registry": self.registry}
        if engine_loader is not None:
            kwargs["engine_loader"] = engine_loader
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-server-loop", daemon=True)
        self.thread.start()
        self.server: SearchServer = self.call(self._make, settings, kwargs)
        self.call(self.server.start)

    @staticmethod
    async def _make(settings: ServerSettings, kwargs: dict[str, Any]) -> SearchServer:
        return SearchServer(settings, **kwargs)

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(fn(*args), self.loop).result(timeout)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def wait_ready(self, timeout: float = 60) -> bool:
        return bool(self.call(self.server.wait_ready, timeout, timeout=timeout + 5))

    def channel(self, credentials: grpc.ChannelCredentials | None = None, **options: Any) -> grpc.Channel:
        """Plaintext, or TLS with `credentials`; `options`: channel options by name, e.g.
        **{"grpc.ssl_target_name_override": "localhost"}."""
        opts = list(options.items())
        if credentials is None:
            return grpc.insecure_channel(self.address, opts)
        return grpc.secure_channel(self.address, credentials, opts)

    def stop(self, grace: float = 1.0) -> None:
        try:
            self.call(self.server.stop, grace)
        finally:
            try:  # as asyncio.run does: finish the calls grpc left pending before the loop closes (else their
                self.call(
                    _cancel_pending, timeout=15
                )  # tasks are destroyed later, inside another test, by the GC)
            except Exception:  # noqa: BLE001 - stopping anyway
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()


def test_settings(**overrides: Any) -> ServerSettings:
    """Loopback, any free port, metrics on any free port, small limits; no config file or env leaks in."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "http_port": None,  # the HTTP tests (tests/server/test_http*.py) ask for one
        "max_image_bytes": 256 * 1024,
        "max_message_bytes": 1024 * 1024,
        "grace_seconds": 1.0,
        "onnx_threads": 1,
        "worker_threads": 2,
    }
    values.update(overrides)
    return ServerSettings(**values)


test_settings.__test__ = False  # type: ignore[attr-defined] - not a test


def serve_annotated(bundle: Path, index: Path, **overrides: Any) -> Iterator[ServerThread]:
    """A module fixture's body: a ready ServerThread on ``bundle`` + ``index`` that keeps every predicted tag."""
    st = ServerThread(test_settings(bundle=bundle, index=index, min_tag_score=0.0, **overrides))
    assert st.wait_ready(), st.server.slot.error
    yield st
    st.stop()


def small_test_stamps(manifest_dir: Path, count: int = 4) -> list[tuple[str, Path]]:
    """(id, file) of test-split stamps small enough for the test server's image limit."""
    from xlsearch.data.manifest import read_manifest

    m = read_manifest(manifest_dir)
    out = [(r.id, m.image_path(r)) for r in m.records if r.split == "test"]
    return [(i, p) for i, p in out if p.stat().st_size < 200 * 1024][:count]


# -- a scripted engine: a fake that satisfies xlsearch.search.protocol.Engine ------------------------------------


@dataclass
class ScriptedEngine:
    """Answers searches from a fixed list; `search_seconds` makes every search sleep (deadline tests),
    `write_seconds` every AddImages batch (write-pool tests)."""

    search_seconds: float = 0.0
    write_seconds: float = 0.0
    ids: list[str] = field(default_factory=lambda: [f"img{i}" for i in range(20)])
    searches: int = 0
    prepares: int = 0
    limits: Limits = field(default_factory=Limits)
    bundle_hash: str = "b" * 64
    index_uid: str = "fake-index"
    index_version: int = 1

    @property
    def index_hash(self) -> str:
        return f"{self.index_uid}-{self.index_version}"

    def warmup(self) -> None:
        pass

    def encode_query(self, query: str, timer: StageTimer | None = None) -> QueryVectors:
        return np.zeros(8, np.float32), np.zeros(8, np.float32)

    def run(self, request: SearchRequest, vectors: QueryVectors | None = None) -> SearchResult:
        self.searches += 1
        if self.search_seconds:
            time.sleep(self.search_seconds)
        a = 0.5 if request.alpha is None else request.alpha
        hits = [
            Hit(i, f"file:///{i}.png", 1.0 - n / 100, 0.5, 0.5, f"caption {i}", [], True)
            for n, i in enumerate(self.ids[: request.top_k])
        ]
        timings = dict.fromkeys(STAGES, 0.001)
        return SearchResult(hits, timings, a, self.index_version, request.mode)

    def prepare(self, items: Sequence[NewImage], start: int = 0) -> list[str]:
        self.prepares += 1
        if self.write_seconds:
            time.sleep(self.write_seconds)
        return [it.id or f"gen{len(self.ids) + start + n}" for n, it in enumerate(items)]

    def commit(self, batches: Sequence[list[str]]) -> list[str]:
        new = [i for b in batches for i in b]
        self.ids.extend(new)
        self.index_version += 1
        return new

    def get(self, image_id: str) -> ImageMeta:
        if image_id not in self.ids:
            raise NotFound(f"no image with id {image_id!r}")
        return ImageMeta(image_id, f"file:///{image_id}.png", (f"caption {image_id}",), ())

    def delete(self, ids: Sequence[str]) -> Deleted:
        gone = [i for i in ids if i in self.ids]
        self.ids = [i for i in self.ids if i not in gone]
        if gone:
            self.index_version += 1
        return Deleted(gone, [i for i in ids if i not in gone])

    def tag(self, request: TagRequest) -> Annotation:
        raise ComponentMissing("the scripted engine has no tagger")

    def caption(self, request: CaptionRequest) -> Annotation:
        raise ComponentMissing("the scripted engine has no captioner")

    def stats(self) -> Stats:
        return Stats(
            images=len(self.ids),
            captions=len(self.ids),
            dim=8,
            factory="IDMap,Flat",
            exact=True,
            bundle_hash=self.bundle_hash,
            index_hash=self.index_hash,
            index_version=self.index_version,
            default_alpha=0.5,
            cl_space="visual",
        )


# -- a real bundle + index pair -----------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
DEMO_BUNDLE = REPO / "runs" / "demo" / "bundle"


def demo_bundle() -> Path | None:
    """runs/demo/bundle, else any finished per-seed bundle of the demo run (manifest.json is written last)."""
    if (DEMO_BUNDLE / "manifest.json").is_file():
        return DEMO_BUNDLE
    found = sorted((REPO / "runs" / "demo").glob("seed*/*/bundle/manifest.json"))
    return found[0].parent if found else None


TUXPAINT_STAMPS = Path("/usr/share/tuxpaint/stamps")


@dataclass(frozen=True)
class ServedPair:
    bundle: Path
    index: Path  # pristine: copy it before serving anything that writes (AddImages/DeleteImages persist)
    spare_images: list[Path]  # real PNGs that are not in the index (for AddImages)

    def index_copy(self, folder: Path) -> Path:
        target = folder / "index"
        shutil.copytree(self.index, target)
        return target


def stamp_pngs() -> list[tuple[Path, str]]:
    """(PNG, English description) of the installed Tux Paint stamps, in a stable order."""
    from xlsearch.data.datasets.tuxpaint import parse_description

    out = []
    for txt in sorted(TUXPAINT_STAMPS.rglob("*.txt")):
        png = txt.with_suffix(".png")
        if png.is_file():
            english, _ = parse_description(txt)
            out.append((png, english))
    return out


def build_stamp_index(bundle_dir: Path, out: Path, count: int = 60) -> list[Path]:
    """Index `count` real stamps with the indexer CLI (`xlsearch index --images DIR --captions FILE`; every 5th
    stamp without a caption); returns spare PNGs that are not indexed (for AddImages)."""
    import json

    from xlsearch_indexer.cli import main as index_main

    stamps = stamp_pngs()
    chosen, spare = stamps[:count], [png for png, _ in stamps[count : count + 8]]
    images = out.parent / f"{out.name}-images"
    lines = []
    for n, (png, english) in enumerate(chosen):
        rel = png.relative_to(TUXPAINT_STAMPS).as_posix()
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, images / rel)
        if english and n % 5:
            lines.append(json.dumps({"image": rel, "caption": english}, ensure_ascii=False))
    captions = out.parent / f"{out.name}-captions.jsonl"
    captions.write_text("\n".join(lines) + "\n", encoding="utf-8")
    argv = [
        "--images",
        str(images),
        "--captions",
        str(captions),
        "--bundle",
        str(bundle_dir),
        "--out",
        str(out),
    ]
    rc = index_main([*argv, "--threads", "2", "--workers", "2", "--no-progress"])
    assert rc == 0, f"xlsearch index {' '.join(argv)} failed ({rc})"
    return spare


def session_pair(request: Any, tmp_path_factory: Any) -> ServedPair:
    """The pair the server tests serve, built once per session (cached on the pytest config): the shared
    `tiny_bundle` / `tiny_index` fixtures when conftest provides them, else the demo bundle and ~60 stamps."""
    cached = request.config.stash.get(_PAIR_KEY, None)
    if cached is not None:
        return cached
    try:
        bundle = Path(request.getfixturevalue("tiny_bundle"))
        index = Path(request.getfixturevalue("tiny_index"))
        # stamps outside the tiny manifest (the last ones by path), small enough for the test server's image limit
        spare = [png for png, _ in stamp_pngs()[::-1] if png.stat().st_size < 128 * 1024][:8]
    except pytest.FixtureLookupError:
        found = demo_bundle()
        if found is None:
            pytest.skip(f"no bundle to serve: {DEMO_BUNDLE} is missing (run `make demo`)")
        if not TUXPAINT_STAMPS.is_dir():
            pytest.skip("tuxpaint-stamps-default is not installed")
        index = tmp_path_factory.mktemp("served") / "index"
        bundle, spare = found, build_stamp_index(found, index)
    pair = ServedPair(bundle, index, spare)
    request.config.stash[_PAIR_KEY] = pair
    return pair


_PAIR_KEY = pytest.StashKey[ServedPair]()
