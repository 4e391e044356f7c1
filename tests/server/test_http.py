"""The HTTP/JSON API over a real server on loopback (the tiny bundle with a tagger and captioner, its index of real
Tux Paint stamps): the same answers as gRPC (one service layer), the one error table, paging and min_score, search
by image and by id, Tag/Caption, AddImages as a bounded multipart stream, DeleteImages, stats, thumbnails only from
the index's source folders, readiness, metrics."""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from server_support import ServerThread, serve_annotated

from xlsearch.data.manifest import read_manifest
from xlsearch.errors import Code
from xlsearch.v1 import search_pb2 as pb
from xlsearch.v1 import search_pb2_grpc as pb_grpc
from xlsearch_server.http_api.errors import HTTP_STATUS


@pytest.fixture(scope="module")
def served(
    tiny_annotated_bundle: Path, tiny_annotated_index: Path, tmp_path_factory
) -> Iterator[ServerThread]:
    index = tmp_path_factory.mktemp("http") / "index"
    shutil.copytree(tiny_annotated_index, index)
    yield from serve_annotated(tiny_annotated_bundle, index, http_port=0)


@pytest.fixture(scope="module")
def http(served: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{served.server.http_port}", timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def stub(served: ServerThread) -> Iterator[pb_grpc.ImageSearchStub]:
    with served.channel() as channel:
        yield pb_grpc.ImageSearchStub(channel)


@pytest.fixture(scope="module")
def stamps(tiny_manifest: Path) -> list[tuple[str, Path, str]]:
    """(id, file, first English sentence) of indexed test-split stamps small enough for the image limit."""
    m = read_manifest(tiny_manifest)
    out = [(r.id, m.image_path(r), r.en[0] if r.en else "") for r in m.records if r.split == "test"]
    return [s for s in out if s[1].stat().st_size < 200 * 1024][:6]


def search(http: httpx.Client, **body) -> dict:
    r = http.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()["error"]
    assert body["code"] == code
    return body["message"]


def test_every_code_has_one_http_status():
    assert set(HTTP_STATUS) == set(Code)


def test_search_answers_like_grpc(http, stub):
    """One service layer: the same ranking, scores and alpha over both transports (Chinese and English queries)."""
    for query, mode in (("一只红色的袋鼠", "CLM"), ("a frog", "CL"), ("青蛙 frog", "CM")):
        got = search(http, query=query, top_k=7, mode=mode)
        want = stub.Search(pb.SearchRequest(query=query, top_k=7, mode=getattr(pb, mode)), timeout=30)
        assert [h["id"] for h in got["hits"]] == [h.id for h in want.hits]
        assert [h["rank"] for h in got["hits"]] == list(range(1, 8))
        for h, w in zip(got["hits"], want.hits, strict=True):
            assert h["score"] == pytest.approx(w.score, abs=1e-6)
            assert (h["cl_score"], h["cm_score"]) == pytest.approx((w.cl_score, w.cm_score), abs=1e-6)
            assert h["thumbnail"].startswith("/v1/thumbnail?id=")
        assert got["mode"] == mode and got["alpha"] == pytest.approx(want.alpha, abs=1e-6)


def test_pages_and_min_score(http):
    """Pages of 4 laid end to end are the first 12 ranks; min_score drops exactly the hits below it."""
    whole = search(http, query="动物", top_k=12)["hits"]
    pages, offset = [], 0
    while offset < 12:
        page = search(http, query="动物", top_k=4, offset=offset)
        pages += page["hits"]
        assert page["offset"] == offset and page["next_offset"] == offset + 4
        offset = page["next_offset"]
    assert [h["id"] for h in pages] == [h["id"] for h in whole]
    assert [h["rank"] for h in pages] == list(range(1, 13))
    cut = (whole[4]["score"] + whole[5]["score"]) / 2
    kept = search(http, query="动物", top_k=12, min_score=cut)
    assert [h["id"] for h in kept["hits"]] == [h["id"] for h in whole[:5]] and kept["next_offset"] == 0
    assert search(http, query="动物", top_k=5, min_score=1.0)["hits"] == []


def test_more_like_this_and_search_by_image(http, stamps):
    sid, path, _ = stamps[0]
    like = search(http, like=sid, top_k=5)
    assert like["mode"] == "CM" and len(like["hits"]) == 5
    assert sid not in [h["id"] for h in like["hits"]]  # the image itself is left out
    scores = [h["score"] for h in like["hits"]]
    assert scores == sorted(scores, reverse=True) and all(h["score"] == h["cm_score"] for h in like["hits"])
    r = http.post(
        "/v1/search/image", files={"image": (path.name, path.read_bytes(), "image/png")}, data={"top_k": "6"}
    )
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert hits[0]["id"] == sid and hits[0]["score"] == pytest.approx(
        1.0, abs=1e-4
    )  # itself, found by pixels
    assert [h["id"] for h in hits[1:]] == [h["id"] for h in like["hits"]]  # then the same neighbours
    message = error(http.post("/v1/search", json={"like": sid, "mode": "CL"}), 400, "invalid_argument")
    assert "CM" in message
    error(http.post("/v1/search", json={"like": "no/such/image"}), 404, "not_found")
    error(http.post("/v1/search", json={"like": sid, "query": "猫"}), 400, "invalid_argument")


def test_errors_map_through_the_one_table(http, served):
    cases = [
        (http.post("/v1/search", json={"query": ""}), 400, "invalid_argument"),
        (http.post("/v1/search", json={"query": "猫", "top_k": 100000}), 400, "invalid_argument"),
        (http.post("/v1/search", json={"query": "猫", "alpha": "0.5"}), 400, "invalid_argument"),
        (http.post("/v1/search", json={"query": "猫", "offset": -1}), 400, "invalid_argument"),
        (http.post("/v1/search", json={"query": "猫", "min_score": 3}), 400, "invalid_argument"),
        (http.post("/v1/search", json={"query": "猫", "tags": "动物"}), 400, "invalid_argument"),
        (http.post("/v1/search", json={"query": "猫", "topk": 3}), 400, "invalid_argument"),
        (
            http.post("/v1/search", content=b"{not json", headers={"content-type": "application/json"}),
            400,
            "invalid_argument",
        ),
        (
            http.post("/v1/search", content=b'["a"]', headers={"content-type": "application/json"}),
            400,
            "invalid_argument",
        ),
        (http.post("/v1/search", data={"query": "猫"}), 400, "invalid_argument"),  # a form where JSON is read
        (
            http.post("/v1/search", json={"query": "猫" * 10, "tags": ["x" * (2 << 20)]}),
            413,
            "resource_exhausted",
        ),
        (http.post("/v1/tag", json={"image_id": "no/such/image"}), 404, "not_found"),
        (http.post("/v1/tag", json={}), 400, "invalid_argument"),
        (
            http.post("/v1/tag", files={"image": ("x.png", b"not an image", "image/png")}),
            400,
            "invalid_argument",
        ),
        (
            http.post("/v1/tag", files={"image": ("x.png", b"\x89PNG" + b"0" * (300 << 10), "image/png")}),
            413,
            "resource_exhausted",
        ),
        (http.get("/v1/thumbnail", params={"id": "x", "size": "9999"}), 400, "invalid_argument"),
    ]
    for response, status, code in cases:
        error(response, status, code)
    assert http.get("/v1/no-such-route").status_code == 404


def test_tag_and_caption_over_http_equal_grpc(http, stub, stamps):
    sid, path, _ = stamps[1]
    by_file = http.post(
        "/v1/tag", files={"image": (path.name, path.read_bytes(), "image/png")}, data={"k": "3"}
    )
    by_id = http.post("/v1/tag", json={"image_id": sid, "k": 3})
    want = stub.Tag(pb.TagRequest(image=pb.ImageRef(image_id=sid), k=3), timeout=60)
    for r in (by_file, by_id):
        assert r.status_code == 200, r.text
        assert [t["tag"] for t in r.json()["tags"]] == [t.tag for t in want.tags]
    r = http.post("/v1/caption", json={"image_id": sid, "n_best": 2, "recommend": True})
    assert r.status_code == 200, r.text
    want = stub.Caption(
        pb.CaptionRequest(image=pb.ImageRef(image_id=sid), n_best=2, recommend=True), timeout=60
    )
    assert [c["text"] for c in r.json()["captions"]] == [c.text for c in want.captions]
    assert [c["text"] for c in r.json()["recommended"]] == [c.text for c in want.recommended]


def _png(color: tuple[int, int, int], size: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "PNG")
    return buf.getvalue()


def test_add_search_delete_over_http(http):
    before = http.get("/v1/stats").json()
    files = [
        ("id", (None, "http/red")),
        ("caption", (None, "A red square.")),
        ("image", ("red.png", _png((220, 20, 20)), "image/png")),
        ("image", ("blue.png", _png((20, 20, 220)), "image/png")),
    ]
    r = http.post("/v1/images", files=files)
    assert r.status_code == 200, r.text
    added = r.json()
    assert (
        added["added"] == 2 and added["ids"][0] == "http/red" and len(added["ids"][1]) == 64
    )  # content hash
    stats = http.get("/v1/stats").json()
    assert stats["images"] == before["images"] + 2 and stats["index_version"] == added["index_version"]
    assert "folder" not in stats  # no server paths
    hits = search(http, like="http/red", top_k=3)["hits"]
    assert hits[0]["id"] == added["ids"][1]  # the other plain square is its nearest image
    r = http.post("/v1/delete", json={"ids": [*added["ids"], "never/there"]})
    assert r.status_code == 200 and r.json()["deleted"] == 2 and r.json()["not_found"] == ["never/there"]
    assert http.get("/v1/stats").json()["images"] == before["images"]


def test_add_images_is_bounded_and_all_or_nothing(http, served):
    count = http.get("/v1/stats").json()["images"]
    big = ("image", ("big.png", b"\x89PNG" + os.urandom(300 << 10), "image/png"))  # above max_image_bytes
    cases = [
        ([("image", ("ok.png", _png((1, 2, 3)), "image/png")), big], 413, "resource_exhausted"),
        (
            [
                ("image", ("ok.png", _png((1, 2, 3)), "image/png")),
                ("image", ("bad.png", b"garbage", "image/png")),
            ],
            400,
            "invalid_argument",
        ),
        ([("caption", (None, "no image follows"))], 400, "invalid_argument"),
        ([("other", (None, "x"))], 400, "invalid_argument"),
    ]
    for files, status, code in cases:
        error(http.post("/v1/images", files=files), status, code)
    error(http.post("/v1/images", json={"image": "x"}), 400, "invalid_argument")
    assert http.get("/v1/stats").json()["images"] == count  # nothing was added


def test_thumbnails_only_from_the_source_folders(http, stub, served, stamps, tmp_path):
    sid, path, _ = stamps[2]
    r = http.get("/v1/thumbnail", params={"id": sid, "size": 64})
    assert r.status_code == 200 and r.headers["content-type"] in ("image/webp", "image/png")
    with Image.open(io.BytesIO(r.content)) as thumb:
        assert max(thumb.size) <= 64
    # an image outside every root (added with a uri there), a symlink inside a root pointing outside, unknown ids:
    outside = tmp_path / "outside.png"
    outside.write_bytes(path.read_bytes())
    manifest = json.loads((served.server.settings.index / "manifest.json").read_text(encoding="utf-8"))
    (src_root,) = manifest["source_roots"]  # recorded by the indexer: the tiny manifest's folder
    assert Path(path).resolve().is_relative_to(src_root)
    link = Path(src_root) / "escape-link.png"
    link.symlink_to(outside)
    try:
        adds = [
            pb.AddImageRequest(image_bytes=path.read_bytes(), id="thumb/outside", uri=str(outside)),
            pb.AddImageRequest(image_bytes=path.read_bytes(), id="thumb/link", uri=str(link)),
            pb.AddImageRequest(image_bytes=path.read_bytes(), id="thumb/passwd", uri="/etc/passwd"),
            pb.AddImageRequest(
                image_bytes=path.read_bytes(), id="thumb/http", uri="http://example.invalid/a.png"
            ),
        ]
        stub.AddImages(iter(adds), timeout=60)
        answers = [
            http.get("/v1/thumbnail", params={"id": i})
            for i in ("thumb/outside", "thumb/link", "thumb/passwd", "thumb/http", "no/such/id", "")
        ]
        assert {(a.status_code, a.content) for a in answers} == {
            (404, answers[0].content)
        }  # one uniform answer
        assert answers[0].json()["error"]["code"] == "not_found"
    finally:
        link.unlink()
        stub.DeleteImages(
            pb.DeleteImagesRequest(ids=["thumb/outside", "thumb/link", "thumb/passwd", "thumb/http"]),
            timeout=30,
        )


def test_health_readiness_openapi_page_and_metrics(http, served):
    assert http.get("/healthz").json() == {"status": "alive"}
    assert http.get("/readyz").json() == {"status": "SERVING"}
    doc = http.get("/openapi.json").json()
    assert (
        doc["openapi"].startswith("3.") and "/v1/search" in doc["paths"] and "/v1/thumbnail" in doc["paths"]
    )
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="query"' in page.text and "/static/app.js" in page.text
    assert http.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert http.get("/static/../settings.py").status_code == 404
    search(http, query="青蛙", top_k=2)
    http.post("/v1/search", json={"query": ""})
    metrics = httpx.get(f"http://127.0.0.1:{served.server.metrics_port}/metrics").text
    assert 'xlsearch_http_requests_total{method="POST",route="/v1/search",status="200"}' in metrics
    assert 'xlsearch_http_requests_total{method="POST",route="/v1/search",status="400"}' in metrics
    assert (
        'xlsearch_http_request_duration_seconds_count{method="GET",route="/readyz",status="200"}' in metrics
    )
    assert 'xlsearch_errors_total{code="INVALID_ARGUMENT",kind="InvalidQuery"}' in metrics
