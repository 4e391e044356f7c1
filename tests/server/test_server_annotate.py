"""Tag and Caption over a real gRPC server serving a bundle with a trained tagger and captioner attached, and the
predicted tags stored in its index (Search returns them and filters on them inside the search)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from server_support import ServerThread, serve_annotated, small_test_stamps, test_settings

from xlsearch.bundle.runtime import Bundle
from xlsearch.index.image_index import ImageIndex
from xlsearch.v1 import search_pb2 as pb
from xlsearch.v1 import search_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def served(
    tiny_annotated_bundle: Path, tiny_annotated_index: Path, tmp_path_factory
) -> Iterator[ServerThread]:
    import shutil

    index = tmp_path_factory.mktemp("annotated") / "index"
    shutil.copytree(tiny_annotated_index, index)
    yield from serve_annotated(tiny_annotated_bundle, index)


@pytest.fixture(scope="module")
def stub(served: ServerThread) -> Iterator[pb_grpc.ImageSearchStub]:
    with served.channel() as channel:
        yield pb_grpc.ImageSearchStub(channel)


@pytest.fixture(scope="module")
def stamps(tiny_manifest: Path) -> list[tuple[str, Path]]:
    """(id, file) of indexed test-split stamps small enough for the test server's image limit."""
    return small_test_stamps(tiny_manifest)


def _code(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=60)
    return info.value.code(), info.value.details()


def by_bytes(path: Path) -> pb.ImageRef:
    return pb.ImageRef(image_bytes=path.read_bytes())


def test_tag_returns_the_predicted_number_of_vocabulary_tags(stub, tiny_annotated_bundle, stamps):
    tagger = Bundle(tiny_annotated_bundle).tagger
    vocab = set(tagger.vocabulary)
    for _, path in stamps:
        resp = stub.Tag(pb.TagRequest(image=by_bytes(path)), timeout=60)
        assert len(resp.tags) >= 1
        assert all(t.tag in vocab for t in resp.tags)
        scores = [t.score for t in resp.tags]
        assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
        assert len({t.tag for t in resp.tags}) == len(resp.tags)
    fixed = stub.Tag(pb.TagRequest(image=by_bytes(stamps[0][1]), k=3), timeout=60)
    assert len(fixed.tags) == 3


def test_tag_by_indexed_id_equals_tag_by_bytes(stub, stamps):
    image_id, path = stamps[0]
    a = stub.Tag(pb.TagRequest(image=by_bytes(path), k=5), timeout=60)
    b = stub.Tag(pb.TagRequest(image=pb.ImageRef(image_id=image_id), k=5), timeout=60)
    assert [t.tag for t in a.tags] == [t.tag for t in b.tags]
    # by id, the tagger reads the feature the index stores at float16 precision
    assert [t.score for t in a.tags] == pytest.approx([t.score for t in b.tags], abs=1e-4)


def test_tag_with_user_tags(stub, tiny_annotated_bundle, stamps):
    tagger = Bundle(tiny_annotated_bundle).tagger
    known = tagger.vocabulary[0]
    resp = stub.Tag(pb.TagRequest(image=by_bytes(stamps[1][1]), k=4, user_tags=[known]), timeout=60)
    assert len(resp.tags) == 4
    code, details = _code(stub.Tag, pb.TagRequest(image=by_bytes(stamps[1][1]), user_tags=["没有这个标签"]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "没有这个标签" in details


BAD_TAGS = {
    "no image": (pb.TagRequest(), grpc.StatusCode.INVALID_ARGUMENT),
    "corrupt image": (
        pb.TagRequest(image=pb.ImageRef(image_bytes=b"\x89PNG\r\n\x1a\n not a png")),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "k zero": (pb.TagRequest(image=pb.ImageRef(image_id="x"), k=0), grpc.StatusCode.INVALID_ARGUMENT),
    "k huge": (pb.TagRequest(image=pb.ImageRef(image_id="x"), k=100000), grpc.StatusCode.INVALID_ARGUMENT),
    "unknown id": (pb.TagRequest(image=pb.ImageRef(image_id="no/such/stamp")), grpc.StatusCode.NOT_FOUND),
    "too large": (
        pb.TagRequest(image=pb.ImageRef(image_bytes=b"\0" * (300 * 1024))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
}


@pytest.mark.parametrize("case", list(BAD_TAGS))
def test_bad_tag_requests_get_status_codes(stub, stamps, case):
    request, expected = BAD_TAGS[case]
    code, details = _code(stub.Tag, request)
    assert code == expected and details
    assert stub.Tag(pb.TagRequest(image=by_bytes(stamps[0][1]), k=1), timeout=60).tags  # still answering


def test_caption_n_best_and_recommendations(stub, stamps):
    resp = stub.Caption(pb.CaptionRequest(image=by_bytes(stamps[0][1]), n_best=3, recommend=True), timeout=60)
    assert len(resp.captions) == 3
    assert all(c.text and c.score <= 0.0 for c in resp.captions)
    assert len({c.text for c in resp.captions}) == 3
    assert [c.score for c in resp.captions] == sorted((c.score for c in resp.captions), reverse=True)
    assert len(resp.recommended) == 5
    cos = [r.score for r in resp.recommended]
    assert cos == sorted(cos, reverse=True) and all(-1.0 <= c <= 1.0 + 1e-6 for c in cos)
    plain = stub.Caption(pb.CaptionRequest(image=by_bytes(stamps[0][1])), timeout=60)
    assert len(plain.captions) == 1 and not plain.recommended
    assert plain.captions[0].text == resp.captions[0].text  # the best beam, whatever n_best asks for


def test_caption_by_id_equals_caption_by_bytes(stub, stamps):
    image_id, path = stamps[2]
    a = stub.Caption(pb.CaptionRequest(image=by_bytes(path), n_best=2), timeout=60)
    b = stub.Caption(pb.CaptionRequest(image=pb.ImageRef(image_id=image_id), n_best=2), timeout=60)
    assert [c.text for c in a.captions] == [c.text for c in b.captions]


@pytest.mark.parametrize(
    "request_, expected",
    [
        (pb.CaptionRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        (
            pb.CaptionRequest(image=pb.ImageRef(image_bytes=b"GIF89a garbage")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (pb.CaptionRequest(image=pb.ImageRef(image_id="x"), n_best=11), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.CaptionRequest(image=pb.ImageRef(image_id="no/such/stamp")), grpc.StatusCode.NOT_FOUND),
    ],
)
def test_bad_caption_requests_get_status_codes(stub, request_, expected):
    code, details = _code(stub.Caption, request_)
    assert code == expected and details


def test_search_hits_carry_predicted_tags_and_filter_inside_the_search(
    stub, tiny_annotated_bundle, tiny_annotated_index
):
    index = ImageIndex.load(tiny_annotated_index, Bundle(tiny_annotated_bundle))
    counts = index.tag_counts()
    assert counts, "the indexer stored no predicted tags"
    every = stub.Search(pb.SearchRequest(query="一只动物", top_k=10), timeout=60)
    assert all(h.tags for h in every.hits)
    # a tag carried by a few images: every one of them comes back, and nothing else, whatever top_k would cut
    tag = min((t for t, c in counts.items() if c >= 2), key=lambda t: counts[t])
    expected = {index.metadata([i])[0].id for i in index.ids_with_tags([tag])}
    resp = stub.Search(pb.SearchRequest(query="一只动物", top_k=100, tags=[tag]), timeout=60)
    assert {h.id for h in resp.hits} == expected
    assert all(tag in h.tags for h in resp.hits)
    few = stub.Search(pb.SearchRequest(query="一只动物", top_k=1, tags=[tag]), timeout=60)
    assert len(few.hits) == 1 and few.hits[0].id == resp.hits[0].id


def test_added_images_get_predicted_tags(stub, stamps):
    spare = stamps[3][1]  # indexed already under its own id: added again under a new one
    added = stub.AddImages(
        iter([pb.AddImageRequest(image_bytes=spare.read_bytes(), id="added/one")]), timeout=60
    )
    assert list(added.ids) == ["added/one"]
    tags = stub.Tag(pb.TagRequest(image=by_bytes(spare)), timeout=60).tags
    # the tiny tagger gives most images the same few tags: ask for all of them
    resp = stub.Search(pb.SearchRequest(query="一只动物", top_k=1000, tags=[tags[0].tag]), timeout=60)
    hit = next(h for h in resp.hits if h.id == "added/one")
    assert set(hit.tags) == {t.tag for t in tags}


def test_only_confident_predicted_tags_are_stored():
    from xlsearch.bundle.tagger import TagScore, confident_tags

    predicted = [
        [TagScore("企鹅", 0.97, "penguin"), TagScore("鸟", 0.31, "bird"), TagScore("英国", 0.06, "uk")],
        [],
    ]
    assert confident_tags(predicted, 0.3) == [("企鹅", "鸟"), ()]
    assert confident_tags(predicted, 0.0) == [("企鹅", "鸟", "英国"), ()]


def test_annotate_latency_benchmark_runs_every_call(served, stamps):
    from xlsearch_bench.annotate import run

    result = run(served.address, [p.read_bytes() for _, p in stamps[:2]], repeat=1, timeout=60)
    rows = {k: v for k, v in result.items() if isinstance(v, dict) and "p50" in v}
    assert len(rows) == 3 and all(v["n"] == 2 and 0 < v["p50"] <= v["max"] for v in rows.values())


def test_a_client_uri_is_never_opened(stub, stamps, tmp_path: Path):
    """Regression (issue 10, defect 3): Tag/Caption by id used to read whatever path a client stored as uri: an
    existence oracle (/etc/passwd vs /nonexistent vs /etc) and a file reader. The uri is metadata only: by id, the
    server answers from the feature the index stores, identically whatever the uri names."""
    (_, added), (_, other) = stamps[0], stamps[1]
    decoy = (
        tmp_path / "decoy.png"
    )  # a real, readable image: if the server read the uri, the tags would be its
    decoy.write_bytes(other.read_bytes())
    expected = stub.Tag(pb.TagRequest(image=by_bytes(added), k=4), timeout=60)
    uris = {"passwd": "/etc/passwd", "missing": "/nonexistent/x.png", "dir": "/etc", "decoy": str(decoy)}
    stub.AddImages(
        iter(
            pb.AddImageRequest(image_bytes=added.read_bytes(), id=f"uri-{k}", uri=u) for k, u in uris.items()
        ),
        timeout=60,
    )
    try:
        for k in uris:
            got = stub.Tag(pb.TagRequest(image=pb.ImageRef(image_id=f"uri-{k}"), k=4), timeout=60)
            assert [t.tag for t in got.tags] == [t.tag for t in expected.tags], k
            assert [t.score for t in got.tags] == pytest.approx([t.score for t in expected.tags], abs=1e-4)
            caption = stub.Caption(pb.CaptionRequest(image=pb.ImageRef(image_id=f"uri-{k}")), timeout=60)
            assert caption.captions, k
    finally:
        stub.DeleteImages(pb.DeleteImagesRequest(ids=[f"uri-{k}" for k in uris]), timeout=60)


def test_an_index_without_features_asks_for_the_bytes(tiny_annotated_bundle, tiny_annotated_index, tmp_path):
    """An index written before features were stored answers Tag by id with FAILED_PRECONDITION (and says what to
    do), never by opening the uri."""
    import json
    import shutil

    index = tmp_path / "index"
    shutil.copytree(tiny_annotated_index, index)
    for name in ("features.f16.npy", "features.ids.npy", "features.faiss"):  # today's files and the older one
        (index / name).unlink(missing_ok=True)
    manifest = json.loads((index / "manifest.json").read_text())
    manifest.update(features=0, feature_dim=0)
    (index / "manifest.json").write_text(json.dumps(manifest))
    some_id = ImageIndex.load(index).metadata([0])[0].id
    st = ServerThread(test_settings(bundle=tiny_annotated_bundle, index=index))
    try:
        assert st.wait_ready(), st.server.slot.error
        with st.channel() as channel:
            code, message = _code(
                pb_grpc.ImageSearchStub(channel).Tag, pb.TagRequest(image=pb.ImageRef(image_id=some_id))
            )
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "rebuild the index" in message
    finally:
        st.stop()
