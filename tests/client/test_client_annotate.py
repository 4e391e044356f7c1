"""The light client's Tag and Caption calls: what goes on the wire (a recording servicer), rendering of results, local
argument errors, and the real server's answers (a bundle without components; the tiny bundle with a trained tagger
and captioner when conftest provides `tiny_annotated_bundle`)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from server_support import ServedPair, ServerThread, session_pair, test_settings

REPO = Path(__file__).resolve().parents[2]
if importlib.util.find_spec("xlsearch_client") is None:  # not pip-installed: use the source checkout
    sys.path.insert(0, str(REPO / "clients"))

from xlsearch.v1 import search_pb2 as pb  # noqa: E402
from xlsearch.v1 import search_pb2_grpc as pb_grpc  # noqa: E402
from xlsearch_cli.main import main as xlsearch_main  # noqa: E402
from xlsearch_client import (  # noqa: E402
    AsyncClient,
    CaptionResult,
    Client,
    ImageId,
    Sentence,
    Tag,
    TagResult,
    XlsearchError,
    _calls,  # noqa: E402
)
from xlsearch_client.cli import caption_report, tag_table  # noqa: E402
from xlsearch_client.cli import main as cli_main  # noqa: E402
from xlsearch_client.results import caption_result_from_proto, tag_result_from_proto  # noqa: E402
from xlsearch_client.table import text_width  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n (the recording servicer never decodes it)"


def as_json(value: object) -> object:
    return json.loads(json.dumps(value, ensure_ascii=False))


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- what the client sends and how it renders the answer: a recording servicer with canned answers ----------------

TAGS = pb.TagResponse(
    tags=[
        pb.TagScore(tag="袋鼠", score=0.9, english=["kangaroo"]),
        pb.TagScore(tag="红色", score=0.3, english=["red", "crimson"]),
        pb.TagScore(tag="动物", score=0.125, english=[]),
    ]
)
CAPTIONS = pb.CaptionResponse(
    captions=[
        pb.ScoredSentence(text="一只红色的袋鼠", score=-2.5),
        pb.ScoredSentence(text="一只袋鼠", score=-3.75),
    ],
    recommended=[pb.ScoredSentence(text="一只袋鼠在跳", score=0.8)],
)


class RecordingServicer(pb_grpc.ImageSearchServicer):
    def __init__(self) -> None:
        self.requests: list[pb.TagRequest | pb.CaptionRequest] = []

    def Tag(self, request: pb.TagRequest, context: grpc.ServicerContext) -> pb.TagResponse:
        self.requests.append(request)
        return TAGS

    def Caption(self, request: pb.CaptionRequest, context: grpc.ServicerContext) -> pb.CaptionResponse:
        self.requests.append(request)
        if not request.recommend:
            return pb.CaptionResponse(captions=CAPTIONS.captions[: max(1, request.n_best)])
        return CAPTIONS


@pytest.fixture(scope="module")
def recorder() -> Iterator[tuple[str, RecordingServicer]]:
    servicer = RecordingServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_ImageSearchServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(0)


@pytest.fixture
def png_file(tmp_path: Path) -> Path:
    path = tmp_path / "红色 袋鼠.png"
    path.write_bytes(PNG)
    return path


def test_requests_on_the_wire(recorder: tuple[str, RecordingServicer], png_file: Path):
    target, servicer = recorder
    servicer.requests.clear()
    with Client(target, timeout=10) as client:
        tags = client.tag(png_file)
        client.tag(str(png_file), k=3, user_tags="袋鼠")
        client.tag(bytearray(PNG), k=0, user_tags=["袋鼠", "红色"])
        client.tag(ImageId("animals/kangaroo.png"))
        captions = client.caption(ImageId("animals/kangaroo.png"), n_best=2, recommend=True)
        client.caption(PNG)
    first, second, third, by_id, caption, plain = servicer.requests
    assert first.image.image_bytes == PNG and not first.HasField("k") and list(first.user_tags) == []
    assert second.image.image_bytes == PNG and second.k == 3 and list(second.user_tags) == ["袋鼠"]
    assert (
        third.HasField("k") and third.k == 0 and list(third.user_tags) == ["袋鼠", "红色"]
    )  # the server judges k
    assert by_id.image.WhichOneof("source") == "image_id" and by_id.image.image_id == "animals/kangaroo.png"
    assert caption.image.image_id == "animals/kangaroo.png" and (caption.n_best, caption.recommend) == (
        2,
        True,
    )
    assert plain.image.image_bytes == PNG and (plain.n_best, plain.recommend) == (1, False)

    assert tags == TagResult(
        (Tag("袋鼠", 0.9, ("kangaroo",)), Tag("红色", 0.3, ("red", "crimson")), Tag("动物", 0.125, ()))
    )
    assert captions.captions == (Sentence("一只红色的袋鼠", -2.5), Sentence("一只袋鼠", -3.75))
    assert captions.recommended == (Sentence("一只袋鼠在跳", 0.8),)


def test_async_client_sends_the_same_requests(recorder: tuple[str, RecordingServicer], png_file: Path):
    target, servicer = recorder

    async def scenario() -> tuple[TagResult, CaptionResult]:
        async with AsyncClient(target, timeout=10) as aclient:
            tags, captions = await asyncio.gather(
                aclient.tag(png_file, k=2, user_tags=["红色"]), aclient.caption(ImageId("x"), recommend=True)
            )
            with pytest.raises(FileNotFoundError, match="missing.png"):
                await aclient.tag(png_file.with_name("missing.png"))
            return tags, captions

    servicer.requests.clear()
    tags, captions = asyncio.run(scenario())
    assert tags == tag_result_from_proto(TAGS) and captions == caption_result_from_proto(CAPTIONS)
    sent = {type(r).__name__: r for r in servicer.requests}
    assert len(servicer.requests) == 2
    assert sent["TagRequest"].image.image_bytes == PNG and sent["TagRequest"].k == 2
    assert sent["CaptionRequest"].image.image_id == "x" and sent["CaptionRequest"].recommend


def test_local_argument_errors(recorder: tuple[str, RecordingServicer], tmp_path: Path):
    target, servicer = recorder
    servicer.requests.clear()
    with Client(target, timeout=10) as client:
        with pytest.raises(FileNotFoundError, match=r"nope\.png: no such file"):
            client.tag(tmp_path / "nope.png")
        with pytest.raises(IsADirectoryError):
            client.caption(str(tmp_path))
        with pytest.raises(TypeError, match="bytes, a file path or an ImageId"):
            client.tag(42)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            client.tag(PNG, k=2.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            client.caption(PNG, n_best=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="string"):
        ImageId(7)  # type: ignore[arg-type]
    assert servicer.requests == []  # nothing was sent


def test_request_builders():
    request = _calls.tag_request(ImageId("a/b.png"), None, ())
    assert request.image.image_id == "a/b.png" and not request.HasField("k")
    assert _calls.tag_request(b"x", 5, "猫").user_tags == ["猫"]
    assert _calls.caption_request(b"x", 0, False).n_best == 0  # 0 = the server's default of 1
    assert _calls.TAG.path == "/xlsearch.v1.ImageSearch/Tag"
    assert _calls.CAPTION.path == "/xlsearch.v1.ImageSearch/Caption"


def test_results_to_dict_and_tables():
    tags = tag_result_from_proto(TAGS)
    assert tags.tags[1].score == 0.3  # float32 on the wire, the short decimal here
    assert as_json(tags.to_dict()) == {
        "tags": [
            {"tag": "袋鼠", "score": 0.9, "english": ["kangaroo"]},
            {"tag": "红色", "score": 0.3, "english": ["red", "crimson"]},
            {"tag": "动物", "score": 0.125, "english": []},
        ]
    }
    lines = tag_table(tags).splitlines()
    assert lines[0].split() == ["rank", "tag", "score", "english"]
    assert lines[2].split() == ["1", "袋鼠", "0.9000", "kangaroo"]
    assert lines[3].endswith("0.3000  red, crimson") and lines[4].endswith("0.1250  -")
    col = text_width(lines[0][: lines[0].index("english")])  # wide characters keep the columns aligned
    assert all(
        text_width(line[: line.index(e)]) == col
        for line, e in zip(lines[2:], ("kan", "red", "-"), strict=True)
    )

    captions = caption_result_from_proto(CAPTIONS)
    assert as_json(captions.to_dict()) == {
        "captions": [{"text": "一只红色的袋鼠", "score": -2.5}, {"text": "一只袋鼠", "score": -3.75}],
        "recommended": [{"text": "一只袋鼠在跳", "score": 0.8}],
    }
    report = caption_report(captions, "kangaroo.png", recommend=True).splitlines()
    assert report[0] == "2 caption(s) for kangaroo.png"
    assert report[1].split() == ["rank", "log-prob", "caption"]
    assert report[3].split() == ["1", "-2.5000", "一只红色的袋鼠"] and report[4].split() == [
        "2",
        "-3.7500",
        "一只袋鼠",
    ]
    assert report[5:7] == ["", "1 recommended sentence(s)"]
    assert report[7].split() == ["rank", "cosine", "sentence"] and report[9].split() == [
        "1",
        "0.8000",
        "一只袋鼠在跳",
    ]
    assert "recommended" not in caption_report(captions, "x", recommend=False)


def test_cli_tag_and_caption_render_the_answers(
    recorder: tuple[str, RecordingServicer], png_file: Path, capsys: pytest.CaptureFixture[str]
):
    target, servicer = recorder
    servicer.requests.clear()
    code, out, err = cli(
        capsys,
        "tag",
        str(png_file),
        "-k",
        "3",
        "--user-tag",
        "袋鼠",
        "--user-tag",
        "红色",
        "--target",
        target,
    )
    assert code == 0 and err == ""
    assert out.splitlines()[0] == f"3 tag(s) for {png_file}"
    assert out.splitlines()[1:] == tag_table(tag_result_from_proto(TAGS)).splitlines()
    sent = servicer.requests[-1]
    assert sent.image.image_bytes == PNG and sent.k == 3 and list(sent.user_tags) == ["袋鼠", "红色"]

    code, out, _ = cli(capsys, "--target", target, "tag", "animals/kangaroo.png", "--id", "--json")
    assert code == 0 and json.loads(out) == as_json(tag_result_from_proto(TAGS).to_dict())
    assert servicer.requests[-1].image.image_id == "animals/kangaroo.png"

    code, out, _ = cli(
        capsys, "caption", "animals/kangaroo.png", "--id", "--n-best", "2", "--recommend", "--target", target
    )
    assert code == 0
    assert out.rstrip("\n") == caption_report(
        caption_result_from_proto(CAPTIONS), "image id 'animals/kangaroo.png'", True
    )
    assert (servicer.requests[-1].n_best, servicer.requests[-1].recommend) == (2, True)

    code, out, _ = cli(capsys, "caption", str(png_file), "--json", "--target", target)
    assert code == 0 and json.loads(out) == {
        "captions": [{"text": "一只红色的袋鼠", "score": -2.5}],
        "recommended": [],
    }


def test_cli_missing_file_names_it_and_sends_nothing(
    recorder: tuple[str, RecordingServicer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    target, servicer = recorder
    servicer.requests.clear()
    missing = tmp_path / "no such stamp.png"
    for command in ("tag", "caption"):
        code, out, err = cli(capsys, command, str(missing), "--target", target)
        assert code == 2 and out == "" and err.count("\n") == 1
        assert err.startswith(f"xlsearch-client: error: {missing}: no such file") and "--id" in err
    code, _, err = cli(capsys, "tag", str(tmp_path), "--target", target)
    assert code == 2 and f"{tmp_path}: not a file" in err
    assert servicer.requests == []


def test_xlsearch_forwards_tag_and_caption(
    recorder: tuple[str, RecordingServicer], png_file: Path, capsys: pytest.CaptureFixture[str]
):
    target, _ = recorder
    assert xlsearch_main(["tag", str(png_file), "--json", "--target", target]) == 0
    assert json.loads(capsys.readouterr().out)["tags"][0]["tag"] == "袋鼠"
    assert xlsearch_main(["caption", "--target", target, str(png_file.with_name("gone.png"))]) == 2
    assert capsys.readouterr().err.startswith("xlsearch: error: ")


# -- the real server, serving a bundle without a tagger or captioner ----------------------------------------------


@pytest.fixture(scope="session")
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ServedPair:
    return session_pair(request, tmp_path_factory)


@pytest.fixture(scope="module")
def plain_server(pair: ServedPair, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    index = pair.index_copy(tmp_path_factory.mktemp("plain-annotate"))
    st = ServerThread(test_settings(bundle=pair.bundle, index=index))
    assert st.wait_ready(), st.server.slot.error
    yield st
    st.stop()


def test_plain_bundle_refuses_with_failed_precondition(
    plain_server: ServerThread, pair: ServedPair, capsys: pytest.CaptureFixture[str]
):
    stamp = pair.spare_images[0]
    with Client(plain_server.address, timeout=30) as client:
        indexed = client.search("一只动物", top_k=1).hits[0].id
        for call, what in ((client.tag, "tagger"), (client.caption, "captioner")):
            for image in (stamp, ImageId(indexed)):
                with pytest.raises(XlsearchError) as info:
                    call(image)
                assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION and what in info.value.message
        # argument errors the service finds before it needs a component
        with pytest.raises(XlsearchError) as info:
            client.tag(b"")
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(XlsearchError) as info:
            client.caption(ImageId("   "))
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(XlsearchError) as info:
            client.tag(b"\0" * (300 * 1024))  # over the test server's 256 KiB image limit
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED

    code, out, err = cli(capsys, "caption", str(stamp), "--recommend", "--target", plain_server.address)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("xlsearch-client: error: FAILED_PRECONDITION: ") and "captioner" in err


# -- the real server, serving the tiny bundle with a trained tagger and captioner ---------------------------------


@pytest.fixture(scope="module")
def annotated_server(
    tiny_annotated_bundle: Path, tiny_annotated_index: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    index = tmp_path_factory.mktemp("client-annotated") / "index"
    shutil.copytree(tiny_annotated_index, index)
    st = ServerThread(test_settings(bundle=tiny_annotated_bundle, index=index))
    assert st.wait_ready(), st.server.slot.error
    yield st
    st.stop()


@pytest.fixture(scope="module")
def annotated(annotated_server: ServerThread) -> Iterator[Client]:
    with Client(annotated_server.address, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def stamps(tiny_manifest: Path) -> list[tuple[str, Path]]:
    """(id, file) of indexed stamps small enough for the test server's image limit."""
    from xlsearch.data.manifest import read_manifest

    m = read_manifest(tiny_manifest)
    found = [(r.id, m.image_path(r)) for r in m.records if r.split == "test"]
    return [(i, p) for i, p in found if p.stat().st_size < 200 * 1024][:3]


def test_tag_by_path_bytes_and_id_agree_with_the_raw_call(
    annotated: Client, annotated_server: ServerThread, stamps: list[tuple[str, Path]]
):
    image_id, path = stamps[0]
    by_path = annotated.tag(path)
    assert isinstance(by_path, TagResult) and by_path.tags
    scores = [t.score for t in by_path.tags]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    assert all(isinstance(t, Tag) and isinstance(t.english, tuple) for t in by_path.tags)
    with annotated_server.channel() as channel:
        raw = pb_grpc.ImageSearchStub(channel).Tag(
            pb.TagRequest(image=pb.ImageRef(image_bytes=path.read_bytes())), timeout=60
        )
    assert by_path == tag_result_from_proto(raw)
    by_bytes, by_id = annotated.tag(path.read_bytes()), annotated.tag(ImageId(image_id))
    for other in (by_bytes, by_id):
        assert [t.tag for t in other.tags] == [t.tag for t in by_path.tags]
        assert [t.score for t in other.tags] == pytest.approx(scores, abs=1e-4)  # by id: float16 feature

    three = annotated.tag(path, k=3, user_tags=[by_path.tags[0].tag])
    assert len(three.tags) == 3


def test_caption_n_best_and_recommend(annotated: Client, stamps: list[tuple[str, Path]]):
    image_id, path = stamps[1]
    result = annotated.caption(path, n_best=3, recommend=True)
    assert isinstance(result, CaptionResult) and len(result.captions) == 3
    logp = [c.score for c in result.captions]
    assert logp == sorted(logp, reverse=True) and all(c.text and c.score <= 0.0 for c in result.captions)
    cosine = [r.score for r in result.recommended]
    assert cosine and cosine == sorted(cosine, reverse=True) and all(-1.0 <= c <= 1.0 + 1e-6 for c in cosine)
    plain = annotated.caption(ImageId(image_id))
    assert plain.recommended == () and [c.text for c in plain.captions] == [result.captions[0].text]


def test_annotate_errors_carry_the_status_codes(annotated: Client, stamps: list[tuple[str, Path]]):
    _, path = stamps[0]
    cases = [
        (
            lambda: annotated.tag(path, user_tags=["没有这个标签"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "没有这个标签",
        ),
        (lambda: annotated.tag(path, k=0), grpc.StatusCode.INVALID_ARGUMENT, "k"),
        (lambda: annotated.tag(b"\x89PNG\r\n\x1a\n not a png"), grpc.StatusCode.INVALID_ARGUMENT, ""),
        (lambda: annotated.caption(path, n_best=11), grpc.StatusCode.INVALID_ARGUMENT, "n_best"),
        (lambda: annotated.caption(ImageId("no/such/stamp")), grpc.StatusCode.NOT_FOUND, ""),
        (lambda: annotated.tag(b"\0" * (300 * 1024)), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    ]
    for call, code, fragment in cases:
        with pytest.raises(XlsearchError) as info:
            call()
        assert info.value.code == code and fragment in info.value.message

    # an image added as bytes (no file the server could read back) is tagged from the feature the index stores
    added = annotated.add_images([(path.read_bytes(), "client/no-uri")])
    try:
        by_id, by_bytes = annotated.tag(ImageId("client/no-uri"), k=3), annotated.tag(path.read_bytes(), k=3)
        assert [t.tag for t in by_id.tags] == [t.tag for t in by_bytes.tags]
        assert np.allclose([t.score for t in by_id.tags], [t.score for t in by_bytes.tags], atol=1e-3)
    finally:
        assert annotated.delete(added.ids).deleted == 1


def test_async_tag_and_caption_match_the_sync_client(
    annotated: Client, annotated_server: ServerThread, stamps: list[tuple[str, Path]]
):
    image_id, path = stamps[2]

    async def scenario() -> tuple[TagResult, CaptionResult]:
        async with AsyncClient(annotated_server.address, timeout=60) as aclient:
            return await asyncio.gather(aclient.tag(path, k=4), aclient.caption(ImageId(image_id), n_best=2))

    tags, captions = asyncio.run(scenario())
    assert tags == annotated.tag(path, k=4)
    assert [c.text for c in captions.captions] == [c.text for c in annotated.caption(path, n_best=2).captions]


def test_cli_over_the_annotated_server(
    annotated: Client,
    annotated_server: ServerThread,
    stamps: list[tuple[str, Path]],
    capsys: pytest.CaptureFixture[str],
):
    image_id, path = stamps[0]
    target = ("--target", annotated_server.address)
    expected = annotated.tag(path)
    code, out, err = cli(capsys, "tag", str(path), "--json", *target)
    assert code == 0 and err == "" and json.loads(out) == as_json(expected.to_dict())

    code, out, _ = cli(capsys, "tag", image_id, "--id", "-k", "2", *target)
    lines = out.splitlines()
    assert code == 0 and lines[0] == f"2 tag(s) for image id {image_id!r}" and len(lines) == 5
    assert [line.split()[1] for line in lines[3:]] == [t.tag for t in annotated.tag(path, k=2).tags]

    assert xlsearch_main(["caption", image_id, "--id", "--n-best", "2", "--recommend", *target]) == 0
    out = capsys.readouterr().out
    result = annotated.caption(ImageId(image_id), n_best=2, recommend=True)
    assert out.rstrip("\n") == caption_report(result, f"image id {image_id!r}", recommend=True)
    assert result.captions[0].text in out and result.recommended[0].text in out
