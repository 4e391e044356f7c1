"""The light client (`clients/xlsearch_client`): sync and async clients and the CLI against a real server on
127.0.0.1 (real bundle + index), error mapping, CJK table alignment, and that importing it stays light."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from server_support import ServedPair, ServerThread, free_port, session_pair, test_settings

REPO = Path(__file__).resolve().parents[2]
CLIENTS = REPO / "clients"
if importlib.util.find_spec("xlsearch_client") is None:  # not pip-installed: use the source checkout
    sys.path.insert(0, str(CLIENTS))

from xlsearch.v1 import search_pb2 as pb  # noqa: E402
from xlsearch.v1 import search_pb2_grpc as pb_grpc  # noqa: E402
from xlsearch_client import AsyncClient, Client, Hit, ImageItem, SearchResult, XlsearchError  # noqa: E402
from xlsearch_client.cli import main as cli_main  # noqa: E402
from xlsearch_client.cli import search_table  # noqa: E402
from xlsearch_client.results import float32  # noqa: E402
from xlsearch_client.table import render, text_width, truncate  # noqa: E402

QUERY = "一只红色的袋鼠"


@pytest.fixture(scope="session")
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ServedPair:
    return session_pair(request, tmp_path_factory)


@pytest.fixture(scope="module")
def server(pair: ServedPair, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    index = pair.index_copy(tmp_path_factory.mktemp("client-server"))
    # Room for any real stamp (some spare ones exceed the default test limit of 256 KiB).
    limits = {"max_image_bytes": 4 << 20, "max_message_bytes": 8 << 20}
    st = ServerThread(test_settings(bundle=pair.bundle, index=index, **limits))
    assert st.wait_ready(), st.server.slot.error
    yield st
    st.stop()


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[Client]:
    with Client(server.address, timeout=30) as c:
        yield c


def unreachable() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens there


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- sync client ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["CL", "CM", "CLM"])
def test_search_matches_the_raw_stub(client: Client, server: ServerThread, mode: str):
    result = client.search(QUERY, top_k=5, mode=mode)
    assert isinstance(result, SearchResult) and len(result.hits) == 5
    with server.channel() as channel:
        raw = pb_grpc.ImageSearchStub(channel).Search(
            pb.SearchRequest(query=QUERY, top_k=5, mode=getattr(pb, mode)), timeout=30
        )
    assert [h.id for h in result.hits] == [h.id for h in raw.hits]
    for hit, raw_hit in zip(result.hits, raw.hits, strict=True):
        assert isinstance(hit, Hit)
        assert hit.score == pytest.approx(raw_hit.score, abs=1e-6)
        assert (hit.caption, hit.uri, hit.has_caption) == (raw_hit.caption, raw_hit.uri, raw_hit.has_caption)
    assert [h.score for h in result.hits] == sorted((h.score for h in result.hits), reverse=True)
    assert result.alpha == {"CL": 1.0, "CM": 0.0}.get(mode, result.alpha)
    assert result.index_version >= 1 and result.total_seconds > 0
    assert result.cached or {"tokenize", "encode", "search", "fuse", "metadata"} <= set(result.timings)


def test_search_alpha_tags_and_cache(client: Client):
    first = client.search("一棵绿色的树", top_k=4, mode="clm", alpha=0.25)
    assert first.alpha == 0.25  # float32 on the wire, shown as the short decimal
    for h in first.hits:
        assert h.score == pytest.approx(0.25 * h.cl_score + 0.75 * h.cm_score, abs=1e-4)
    again = client.search("  一棵绿色的树 ", top_k=4, mode="CLM", alpha=0.25)
    assert again.cached and [h.id for h in again.hits] == [h.id for h in first.hits]
    assert client.search(QUERY, top_k=3, tags=["没有这个标签"]).hits == ()  # no image carries it


def test_stats_and_health(client: Client):
    stats = client.stats()
    assert stats.images >= 50 and 0 < stats.captions <= stats.images and stats.dim > 0
    assert (
        stats.bundle_hash and stats.index_hash and stats.cache_backend == "memory" and stats.cache_connected
    )
    assert 0.0 <= stats.default_alpha <= 1.0
    assert client.health() == "SERVING"
    assert client.health("xlsearch.v1.ImageSearch") == "SERVING"
    assert client.health("xlsearch.cache") == "SERVING"
    with pytest.raises(XlsearchError) as info:
        client.health("no.such.Service")
    assert info.value.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"query": ""}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"query": QUERY, "min_score": 1.5}, grpc.StatusCode.INVALID_ARGUMENT),  # cosines are in [-1, 1]
        ({"query": QUERY, "top_k": 1_000_000}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"query": QUERY, "alpha": 1.5}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_errors_carry_status_code_and_message(client: Client, kwargs: dict, code: grpc.StatusCode):
    with pytest.raises(XlsearchError) as info:
        client.search(**kwargs)
    assert info.value.code == code and info.value.code_name == code.name
    assert info.value.message and str(info.value).startswith(f"{code.name}: ")


def test_local_argument_errors_and_deadlines(client: Client):
    with pytest.raises(ValueError, match="unknown mode"):
        client.search(QUERY, mode="XL")
    with pytest.raises(XlsearchError) as info:
        client.search("一条小狗", timeout=0.001)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    with Client(unreachable(), timeout=5) as nowhere, pytest.raises(XlsearchError) as info:
        nowhere.stats()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert client.health() == "SERVING"  # the server is fine


def test_add_images_from_bytes_and_paths_then_delete(client: Client, pair: ServedPair):
    png_a, png_b = pair.spare_images[0], pair.spare_images[1]
    before = client.stats()
    added = client.add_images(
        [
            (png_a.read_bytes(), "client/bytes", "A stamp sent as bytes.", "memory://a"),
            ImageItem(png_b, "client/path", "A stamp sent as a path."),
        ]
    )
    assert added.ids == ("client/bytes", "client/path") and added.added == 2
    assert added.index_version > before.index_version
    after = client.stats()
    assert after.images == before.images + 2 and after.index_version == added.index_version

    gone = client.delete(["client/bytes", "client/path", "client/never"])
    assert gone.deleted == 2 and gone.not_found == ("client/never",)
    assert client.stats().images == before.images


def test_add_images_is_all_or_nothing_when_a_file_cannot_be_read(client: Client, pair: ServedPair):
    version = client.stats().index_version
    images = [(pair.spare_images[2], "client/ok"), ("/nonexistent/stamp.png", "client/missing")]
    with pytest.raises(FileNotFoundError):
        client.add_images(images)
    assert client.stats().index_version == version  # the call was cancelled before the stream was closed
    with pytest.raises(XlsearchError) as info:  # the server refuses a corrupt image: nothing is added either
        client.add_images([(pair.spare_images[2], "client/ok"), (b"not an image", "client/corrupt")])
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert client.stats().index_version == version


# -- async client --------------------------------------------------------------------------------------------------


def test_async_client(server: ServerThread, pair: ServedPair, client: Client):
    async def images():
        yield pair.spare_images[3], "client/async", "A stamp sent by the async client."

    async def scenario() -> None:
        async with AsyncClient(server.address, timeout=30) as aclient:
            assert await aclient.health() == "SERVING"
            sync_ids = [h.id for h in client.search(QUERY, top_k=4, mode="CM").hits]
            results = await asyncio.gather(*(aclient.search(QUERY, top_k=4, mode="CM") for _ in range(3)))
            assert all([h.id for h in r.hits] == sync_ids for r in results)
            with pytest.raises(XlsearchError) as info:
                await aclient.search("   ")
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT

            before = await aclient.stats()
            added = await aclient.add_images(images())
            assert added.ids == ("client/async",) and added.index_version > before.index_version
            with pytest.raises(FileNotFoundError):
                await aclient.add_images(
                    [(pair.spare_images[4], "client/x"), ("/nonexistent.png", "client/y")]
                )
            assert (await aclient.stats()).index_version == added.index_version
            gone = await aclient.delete("client/async")
            assert gone.deleted == 1 and gone.not_found == ()

        async with AsyncClient(unreachable(), timeout=5) as nowhere:
            with pytest.raises(XlsearchError) as info:
                await nowhere.health()
            assert info.value.code == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())


# -- CLI -----------------------------------------------------------------------------------------------------------


def test_cli_search_table_and_json(server: ServerThread, client: Client, capsys: pytest.CaptureFixture[str]):
    expected = client.search(QUERY, top_k=5, mode="CLM")
    code, out, err = cli(capsys, "search", QUERY, "--top-k", "5", "--target", server.address)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("5 hits for '一只红色的袋鼠' (CLM, alpha")
    assert lines[1].split() == ["rank", "score", "CL", "CM", "caption", "path"]
    rows = lines[3:]
    assert len(rows) == 5
    top = expected.hits[0]
    assert rows[0].split()[:2] == ["1", f"{top.score:.4f}"]
    assert top.caption[:40] in rows[0] and (top.path or top.uri) in rows[0]
    # every row's caption column starts at the same display column as the header's
    col = text_width(lines[1][: lines[1].index("caption")])
    for row, hit in zip(rows, expected.hits, strict=True):
        shown = (hit.caption or "-")[:10]
        assert text_width(row[: row.index(shown)]) == col

    code, out, _ = cli(
        capsys, "--target", server.address, "search", QUERY, "--top-k", "3", "--mode", "cl", "--json"
    )
    data = json.loads(out)
    assert code == 0 and len(data["hits"]) == 3 and data["alpha"] == 1.0
    assert set(data["hits"][0]) >= {"id", "uri", "score", "cl_score", "cm_score", "caption", "tags"}
    assert [h["id"] for h in data["hits"]] == [h.id for h in client.search(QUERY, top_k=3, mode="CL").hits]


def test_cli_add_delete_stats_health(
    server: ServerThread, pair: ServedPair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    folder = tmp_path / "upload"
    (folder / "sub").mkdir(parents=True)
    shutil.copyfile(pair.spare_images[5], folder / "one.png")
    shutil.copyfile(pair.spare_images[6], folder / "sub" / "two.png")
    (folder / ".hidden.png").write_bytes(b"skipped")
    (folder / "notes.txt").write_text("not an image")
    captions = tmp_path / "captions.csv"
    captions.write_text("image,caption\none.png,A first stamp.\nsub/two.png,一只袋鼠 (a kangaroo)\n", "utf-8")
    target = ("--target", server.address)

    code, out, err = cli(capsys, "add", str(folder), "--captions", str(captions), "--json", *target)
    assert code == 0 and err == "", err
    added = json.loads(out)
    assert added["ids"] == ["one.png", "sub/two.png"] and added["added"] == 2

    code, out, _ = cli(capsys, "stats", *target)
    assert code == 0
    table = dict(line.split(None, 1) for line in out.splitlines())
    assert table["index_version"] == str(added["index_version"]) and table["cache_connected"] == "yes"
    assert {"images", "captions", "dim", "factory", "bundle_hash", "cache_backend"} <= set(table)

    code, out, _ = cli(capsys, "add", str(folder / "one.png"), "--caption", "Again, as a file.", *target)
    assert code == 0 and "added 1 image(s)" in out
    content_id = out.splitlines()[2].split()[0]  # id column of the first row: the server's content-hash id
    assert content_id and content_id != "one.png"

    code, out, _ = cli(capsys, "delete", "one.png", "sub/two.png", content_id, "no/such/id", *target)
    assert code == 0 and out.startswith("deleted 3 image(s)") and "not found: no/such/id" in out

    code, out, _ = cli(capsys, "health", *target)
    assert (code, out.strip()) == (0, "SERVING")


def test_cli_errors_are_one_line_with_the_status_code(
    server: ServerThread, capsys: pytest.CaptureFixture[str]
):
    code, out, err = cli(capsys, "search", "", "--target", server.address)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "INVALID_ARGUMENT" in err and "Traceback" not in err

    code, out, err = cli(capsys, "stats", "--target", unreachable(), "--timeout", "5")
    assert code == 2 and err.startswith("xlsearch-client: error: UNAVAILABLE: ") and err.count("\n") == 1

    code, _, err = cli(capsys, "add", "/nonexistent/folder", "--target", server.address)
    assert code == 2 and "no such file or folder" in err and err.count("\n") == 1

    code, _, err = cli(capsys, "search", QUERY, "--mode", "CLM", "--alpha", "2", "--target", server.address)
    assert code == 2 and "INVALID_ARGUMENT" in err


def test_cli_health_exit_code_while_loading(
    pair: ServedPair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    release = threading.Event()

    def never_loads(settings):
        release.wait(30)
        raise RuntimeError("test: not loading")

    st = ServerThread(test_settings(bundle=pair.bundle, index=pair.index), engine_loader=never_loads)
    try:
        code, out, _ = cli(capsys, "health", "--target", st.address)
        assert (code, out.strip()) == (1, "NOT_SERVING")
        code, _, err = cli(capsys, "search", QUERY, "--target", st.address)
        assert code == 2 and "UNAVAILABLE" in err
    finally:
        release.set()
        st.stop(0.1)


def test_cli_as_a_process_never_prints_a_traceback(server: ServerThread):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLSEARCH_", "GRPC_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(CLIENTS), env.get("PYTHONPATH", "")])
    env["XLSEARCH_TARGET"] = unreachable()
    run = subprocess.run(
        [sys.executable, "-m", "xlsearch_client", "search", QUERY, "--timeout", "5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.startswith("xlsearch-client: error: UNAVAILABLE: ") and run.stderr.count("\n") == 1

    env["XLSEARCH_TARGET"] = server.address
    ok = subprocess.run(
        [sys.executable, "-m", "xlsearch_client", "health"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert (ok.returncode, ok.stdout.strip()) == (0, "SERVING")


# -- table formatting ----------------------------------------------------------------------------------------------


def test_table_aligns_chinese_text_by_display_width():
    hits = (
        Hit("a", "/images/kangaroo.png", 0.9, 0.8, 0.7, "一只红色的袋鼠", (), True),
        Hit("b", "file:///images/%E7%8C%AB.png", 0.5, 0.4, 0.3, "A cat 猫 on a mat", (), True),
        Hit("c", "", 0.25, 0.2, 0.1, "", (), False),
        Hit("d", "s3://bucket/x.png", 0.125, 0.1, 0.1, "e\u0301te\u0301 (combining accents)", (), True),
    )
    lines = search_table(SearchResult(hits)).splitlines()
    paths = ["path", "/images/kangaroo.png", "/images/猫.png", "c", "s3://bucket/x.png"]
    offsets = {
        text_width(line[: line.rindex(p)]) for line, p in zip([lines[0], *lines[2:]], paths, strict=True)
    }
    assert len(offsets) == 1  # the path column starts at the same terminal column on every line
    assert text_width("一只红色的袋鼠") == 14 and text_width("e\u0301") == 1
    assert all(line == line.rstrip() for line in lines)


def test_truncate_and_render_by_columns():
    assert truncate("一二三四五六", 7) == "一二..." and text_width(truncate("一二三四五六", 7)) <= 7
    assert truncate("abc", 3) == "abc" and truncate("abcdef", 5) == "ab..."
    out = render(("k", "v"), [("中文", "x\ny")], max_widths=(None, 10)).splitlines()
    assert out[2] == "中文  x y"  # control characters never break a row
    assert float32(0.30000001192092896) == 0.3 and float32(0.94) == 0.94


# -- light import --------------------------------------------------------------------------------------------------


def test_importing_the_client_stays_light():
    code = (
        "import sys\n"
        "import xlsearch_client, xlsearch_client.cli, xlsearch_client.aio\n"
        "heavy = {'torch', 'numpy', 'onnxruntime', 'faiss', 'PIL', 'xlsearch'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "print(xlsearch_client._proto.search_pb2.__name__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(CLIENTS)}
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=CLIENTS, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "xlsearch_client._proto.search_pb2"
