"""Replicas: two real `xlsearch serve` processes on one Milvus collection (a `milvus-lite server` process on loopback:
a Milvus Lite *file* takes one process at a time, it holds an flock) and one real redis-server. An image added
through one replica is found through the other, a delete likewise; the shared Redis cache serves one replica's
entry to the other and is invalidated by the index version every replica reads (docs/scaling.md)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from server_support import REDIS_SERVER, RedisProcess, ServedPair, free_port, session_pair
from test_server_shutdown import LISTENING, ServerProcess, wait_serving

from xlsearch.bundle.runtime import Bundle
from xlsearch.index.image_index import ImageIndex
from xlsearch.v1 import search_pb2 as pb
from xlsearch.v1 import search_pb2_grpc as pb_grpc

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]
pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

QUERY = "一只动物"
REFRESH = 0.2  # --milvus-refresh-seconds of both replicas


@pytest.fixture(scope="session")
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ServedPair:
    return session_pair(request, tmp_path_factory)


@pytest.fixture
def milvus_server(tmp_path: Path) -> Iterator[str]:
    """`milvus-lite server` on a free loopback port, its data in tmp_path."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(tmp_path / "milvus")]
        + ["--host", "127.0.0.1", "--port", str(port), "--max-workers", "8"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("milvus-lite server did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(10)


def copy_to_milvus(pair: ServedPair, uri: str, name: str) -> int:
    """The served FAISS index's rows (vectors, features, metadata) as a new Milvus collection ``name``."""
    from xlsearch.index.milvus import MilvusIndex

    bundle = Bundle(pair.bundle, intra_op_threads=1)
    src = ImageIndex.load(pair.index, bundle)
    ids = src.int_ids()
    metas = src.metadata(ids)
    captions = [
        src.caption_vectors(np.array([i]))[0] if m.has_caption else None
        for i, m in zip(ids, metas, strict=True)
    ]
    target = MilvusIndex.create(uri, name, bundle)
    target.add(metas, src.image_vectors(ids), captions, features=src.image_features(ids))
    target.set_params(roots=src.source_roots)
    target.flush()
    target.close()
    return len(ids)


def replica(pair: ServedPair, uri: str, redis_url: str) -> tuple[ServerProcess, str]:
    server = ServerProcess(
        ["-m", "xlsearch_server.cli", "--bundle", str(pair.bundle), "--index-backend", "milvus"]
        + ["--milvus-uri", uri, "--milvus-collection", "tux", "--milvus-refresh-seconds", str(REFRESH)]
        + ["--redis-url", redis_url, "--port", "0", "--metrics-port", "0", "--http-port", "0"]
        + ["--onnx-threads", "1", "--encoder-instances", "1"]
    )
    return server, f"127.0.0.1:{server.wait_for(LISTENING, timeout=120).group(1)}"


def search(stub: pb_grpc.ImageSearchStub, top_k: int) -> pb.SearchResponse:
    return stub.Search(pb.SearchRequest(query=QUERY, top_k=top_k, mode=pb.CLM), timeout=60)


def until(stub: pb_grpc.ImageSearchStub, top_k: int, predicate, timeout: float = 30) -> pb.SearchResponse:
    """Search until ``predicate(response)``: the other replica's change shows within its refresh period."""
    deadline = time.monotonic() + timeout
    while True:
        resp = search(stub, top_k)
        if predicate(resp) or time.monotonic() > deadline:
            return resp
        time.sleep(REFRESH / 4)


def test_an_image_added_through_one_replica_is_found_through_the_other(
    pair: ServedPair, milvus_server: str, tmp_path: Path
) -> None:
    n = copy_to_milvus(pair, milvus_server, "tux")
    redis = RedisProcess(tmp_path)
    redis.start()
    (a, addr_a), (b, addr_b) = (
        replica(pair, milvus_server, redis.url),
        replica(pair, milvus_server, redis.url),
    )
    try:
        wait_serving(addr_a, timeout=120)
        wait_serving(addr_b, timeout=120)
        with grpc.insecure_channel(addr_a) as ca, grpc.insecure_channel(addr_b) as cb:
            sa, sb = pb_grpc.ImageSearchStub(ca), pb_grpc.ImageSearchStub(cb)
            top_k = n + 5  # every image: the result says exactly which ones a replica sees
            first = search(sb, top_k)
            assert len(first.hits) == n and not first.cached
            assert search(
                sa, top_k
            ).cached  # B's entry in the shared Redis, served by A: same index, same version
            version = first.index_version

            png = pair.spare_images[0]
            added = sa.AddImages(
                iter(
                    [
                        pb.AddImageRequest(
                            image_bytes=png.read_bytes(), id="replica/new", caption="A new stamp."
                        )
                    ]
                ),
                timeout=120,
            )
            assert added.added == 1
            seen = until(sb, top_k, lambda r: "replica/new" in {h.id for h in r.hits})
            assert "replica/new" in {h.id for h in seen.hits}, "B never saw A's image (stale cache or index)"
            assert len(seen.hits) == n + 1 and seen.index_version > version
            assert sb.GetStats(pb.GetStatsRequest(), timeout=30).images == n + 1
            # the image itself, searched by its bytes through B, is its own nearest neighbour
            by_image = sb.Search(
                pb.SearchRequest(image=pb.ImageRef(image_bytes=png.read_bytes()), top_k=1), timeout=60
            )
            assert by_image.hits[0].id == "replica/new" and by_image.hits[0].score == pytest.approx(
                1.0, abs=1e-3
            )
            # A wrote, yet it shares B's entry of the new version (the version is shared, not per process)
            again = until(sa, top_k, lambda r: r.index_version == seen.index_version)
            assert again.cached and len(again.hits) == n + 1

            gone = first.hits[0].id
            assert sb.DeleteImages(pb.DeleteImagesRequest(ids=[gone, "replica/new"]), timeout=30).deleted == 2
            after = until(sa, top_k, lambda r: len(r.hits) == n - 1)
            assert {h.id for h in after.hits} == {h.id for h in first.hits} - {gone}
            assert not after.cached and after.index_version > seen.index_version
    finally:
        a.kill()
        b.kill()
        redis.stop()
