"""Search by image, "more like this", min_score and paging through the light client (sync, async, CLI) against a
real server on loopback; English and mixed queries are searched by default."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from server_support import ServedPair, ServerThread, session_pair, test_settings

CLIENTS = Path(__file__).resolve().parents[2] / "clients"
if importlib.util.find_spec("xlsearch_client") is None:  # not pip-installed: use the source checkout
    sys.path.insert(0, str(CLIENTS))

from xlsearch_client import AsyncClient, Client, ImageId, XlsearchError  # noqa: E402
from xlsearch_client.cli import main as cli_main  # noqa: E402


@pytest.fixture(scope="session")
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ServedPair:
    return session_pair(request, tmp_path_factory)


@pytest.fixture(scope="module")
def server(pair: ServedPair, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    index = pair.index_copy(tmp_path_factory.mktemp("client-search"))
    st = ServerThread(
        test_settings(bundle=pair.bundle, index=index, max_image_bytes=4 << 20, max_message_bytes=8 << 20)
    )
    assert st.wait_ready(), st.server.slot.error
    yield st
    st.stop()


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[Client]:
    with Client(server.address, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def indexed(client: Client, pair: ServedPair) -> tuple[str, Path]:
    """(id, file) of an indexed image whose uri is a file here."""
    hit = next(h for h in client.search("动物", top_k=50).hits if h.path and Path(h.path).is_file())
    return hit.id, Path(hit.path)  # type: ignore[arg-type]


def test_english_and_mixed_queries_are_searched(client: Client):
    for query in ("a red kangaroo", "一只 red kangaroo", "frog"):
        result = client.search(query, top_k=5)
        assert len(result.hits) == 5 and result.mode == "CLM"


def test_pages_are_the_ranks_of_one_long_list(client: Client):
    whole = client.search("一只红色的袋鼠", top_k=15, mode="CM")
    seen, offset = [], 0
    while True:
        page = client.search("一只红色的袋鼠", top_k=4, mode="CM", offset=offset)
        seen += [h.id for h in page.hits]
        assert page.offset == offset
        if len(seen) >= 15:
            break
        assert page.next_offset == offset + 4
        offset = page.next_offset
    assert seen[:15] == [h.id for h in whole.hits]
    cut = (whole.hits[6].score + whole.hits[7].score) / 2  # between two hits (scores are float32 on the wire)
    kept = client.search("一只红色的袋鼠", top_k=15, mode="CM", min_score=cut)
    assert [h.id for h in kept.hits] == [h.id for h in whole.hits[:7]]
    assert all(h.score >= cut for h in kept.hits)


def test_search_by_image_bytes_path_and_id(client: Client, indexed: tuple[str, Path]):
    image_id, path = indexed
    by_path = client.search_image(path, top_k=6)
    by_bytes = client.search_image(path.read_bytes(), top_k=6)
    like = client.search_image(ImageId(image_id), top_k=5)
    assert by_path.mode == by_bytes.mode == like.mode == "CM"
    assert [h.id for h in by_path.hits] == [h.id for h in by_bytes.hits]
    assert by_path.hits[0].id == image_id and by_path.hits[0].cm_score == pytest.approx(1.0, abs=1e-4)
    assert image_id not in [h.id for h in like.hits]
    assert [h.id for h in like.hits] == [h.id for h in by_path.hits[1:]]
    with pytest.raises(XlsearchError) as info:
        client.search_image(ImageId("no/such/image"))
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(XlsearchError) as info:
        client.search_image(b"not an image")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_async_client_searches_by_image_and_pages(server: ServerThread, client: Client, indexed):
    image_id, path = indexed

    async def go():
        async with AsyncClient(server.address, timeout=30) as ac:
            return (
                await ac.search_image(ImageId(image_id), top_k=3, offset=2),
                await ac.search("青蛙", top_k=3, min_score=-1.0, offset=1),
            )

    like, text = asyncio.run(go())
    assert [h.id for h in like.hits] == [
        h.id for h in client.search_image(ImageId(image_id), top_k=5).hits[2:]
    ]
    assert [h.id for h in text.hits] == [h.id for h in client.search("青蛙", top_k=4).hits[1:]]


def test_cli_search_by_image_like_and_pages(server: ServerThread, indexed, capsys):
    image_id, path = indexed
    target = ["--target", server.address]
    assert cli_main(["search", "--image", str(path), "--top-k", "3", "--json", *target]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "CM" and out["hits"][0]["id"] == image_id
    assert cli_main(["search", "--like", image_id, "--top-k", "3", "--offset", "3", *target]) == 0
    text = capsys.readouterr().out
    assert f"images like {image_id!r}, ranks 4-6" in text and "next page: --offset 6" in text
    assert text.splitlines()[3].split()[0] == "4"  # ranks continue after the offset
    assert cli_main(["search", "frog", "--min-score", "0.99", "--json", *target]) == 0
    assert all(h["score"] >= 0.99 for h in json.loads(capsys.readouterr().out)["hits"])
    assert cli_main(["search", "青蛙", "--like", image_id, *target]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert cli_main(["search", "--like", image_id, "--mode", "CL", *target]) == 2
    assert "CM" in capsys.readouterr().err
