"""kill -9 of a real `xlsearch serve` process: every AddImages / DeleteImages it acknowledged is there after a restart
on the same folder (the change log replays), and the restarted server takes new changes; `--ef-search` / `--nprobe`
reach the served index."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from server_support import ServedPair, session_pair
from test_server_shutdown import LISTENING, ServerProcess, serve_args, wait_serving

from xlsearch.v1 import search_pb2 as pb
from xlsearch.v1 import search_pb2_grpc as pb_grpc


@pytest.fixture(scope="session")
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ServedPair:
    return session_pair(request, tmp_path_factory)


def serve(pair: ServedPair, index: Path, *extra: str) -> tuple[ServerProcess, str]:
    server = ServerProcess(serve_args(pair.bundle, index, *extra))
    address = f"127.0.0.1:{server.wait_for(LISTENING, timeout=120).group(1)}"
    wait_serving(address, timeout=120)
    return server, address


def ids_served(address: str) -> tuple[set[str], int]:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ImageSearchStub(channel)
        stats = stub.GetStats(pb.GetStatsRequest(), timeout=30)
        hits = stub.Search(pb.SearchRequest(query="一只动物", top_k=stats.images), timeout=60).hits
        return {h.id for h in hits}, stats.index_version


def test_acknowledged_changes_survive_kill_9_of_the_server(pair: ServedPair, tmp_path: Path) -> None:
    index = pair.index_copy(tmp_path)
    server, address = serve(pair, index)
    try:
        before, _ = ids_served(address)
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.ImageSearchStub(channel)
            for n, png in enumerate(pair.spare_images[:3]):
                stub.AddImages(
                    iter(
                        [pb.AddImageRequest(image_bytes=png.read_bytes(), id=f"crash/{n}", caption="a stamp")]
                    ),
                    timeout=120,
                )
            gone = sorted(before)[0]
            assert stub.DeleteImages(pb.DeleteImagesRequest(ids=[gone]), timeout=30).deleted == 1
            version = stub.GetStats(pb.GetStatsRequest(), timeout=30).index_version
    finally:
        server.kill()  # SIGKILL right after the last acknowledgement: no shutdown hook runs
    assert (index / "changes.log").stat().st_size > 0
    server, address = serve(pair, index)
    try:
        after, after_version = ids_served(address)
        assert after == (before - {gone}) | {"crash/0", "crash/1", "crash/2"}
        assert after_version == version
        with grpc.insecure_channel(address) as channel:  # and it goes on taking changes
            stub = pb_grpc.ImageSearchStub(channel)
            stub.AddImages(
                iter([pb.AddImageRequest(image_bytes=pair.spare_images[3].read_bytes(), id="crash/3")]),
                timeout=120,
            )
    finally:
        server.kill()


def test_search_parameter_settings_reach_the_served_index(pair: ServedPair) -> None:
    from xlsearch_server.service.loading import load_engine
    from xlsearch_server.settings import ServerSettings

    engine = load_engine(
        ServerSettings(bundle=pair.bundle, index=pair.index, ef_search=77, nprobe=5, encoder_instances=2)
    )
    assert (engine.index.ef_search, engine.index.nprobe) == (77, 5)
    assert engine.bundle.sentence_instances == (2 if engine.bundle.manifest.sentence_encoder else 1)
    assert not (pair.index / "changes.log").exists()  # serving alone never writes the folder
