"""Paging, the relevance cutoff and search by image, against brute force over every stored vector of a real index
(the tiny bundle's index of real Tux Paint stamps, built by `xlsearch index`): page n+1 starts exactly where page n
ended, min_score keeps exactly the hits at or above it, an image query ranks by image-to-image similarity and an
indexed id leaves itself out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xlsearch.bundle.runtime import Bundle
from xlsearch.data.manifest import read_manifest
from xlsearch.errors import InvalidArgument, NotFound
from xlsearch.index.image_index import ImageIndex
from xlsearch.search.engine import SearchEngine
from xlsearch.search.types import ImageRef, Limits, SearchResult
from xlsearch.search.validate import search_request

Scores = dict[int, tuple[float, float, float]]


@pytest.fixture(scope="module")
def engine(tiny_bundle: Path, tiny_index: Path) -> SearchEngine:
    bundle = Bundle(tiny_bundle)
    return SearchEngine(
        bundle, ImageIndex.load(tiny_index, bundle), persist=False, limits=Limits(max_offset=500)
    )


@pytest.fixture(scope="module")
def queries(engine: SearchEngine, tiny_manifest: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    texts = [s for r in read_manifest(tiny_manifest).split("test") for s in r.zh][:8]
    q_cm, q_cl = engine.encode_queries(texts)
    return list(zip(q_cm, q_cl, strict=True))


def brute(index: ImageIndex, q_cm: np.ndarray, q_cl: np.ndarray | None, a: float) -> Scores:
    """int id -> (fused, cl, cm) by numpy over every stored vector (uncaptioned images take CM as CL)."""
    ids = index.int_ids()
    cm = index.image_vectors(ids).astype(np.float64) @ q_cm.astype(np.float64)
    cl = cm.copy()
    has = index.has_caption(ids)
    if q_cl is not None and has.any():
        cl[has] = index.caption_vectors(ids[has]).astype(np.float64) @ q_cl.astype(np.float64)
    fused = a * cl + (1 - a) * cm
    return {int(i): (fused[n], cl[n], cm[n]) for n, i in enumerate(ids)}


def ranking(scores: Scores) -> list[int]:
    return sorted(scores, key=lambda i: (-scores[i][0], i))  # ties: the lower int id first, as the engine


def assert_page(res: SearchResult, want: list[int], scores: Scores, index: ImageIndex) -> None:
    """The hits are `want` (up to exact-score ties) with brute force's scores."""
    assert len(res.hits) == len(want)
    for hit, w in zip(res.hits, want, strict=True):
        got = index.int_id(hit.id)
        if got != w:
            assert scores[got][0] == pytest.approx(scores[w][0], abs=1e-6), (hit.id, got, w)
        assert (hit.score, hit.cl_score, hit.cm_score) == pytest.approx(scores[got], abs=1e-5)


@pytest.mark.parametrize("depth", [None, 1], ids=["default-depth", "depth-1"])
def test_pages_equal_brute_force_ranks(engine: SearchEngine, queries, depth: int | None) -> None:
    eng = SearchEngine(engine.bundle, engine.index, persist=False, limits=engine.limits, initial_depth=depth)
    n = engine.index.count
    for q_cm, q_cl in queries:
        for mode, a in (("CL", 1.0), ("CM", 0.0), ("CLM", 0.5)):
            scores = brute(engine.index, q_cm, q_cl, a)
            order = ranking(scores)
            for offset, top_k in ((0, 5), (5, 5), (13, 7), (n - 3, 10), (n, 5)):
                res = eng.search_vectors(
                    q_cm, q_cl, top_k, mode, 0.5 if mode == "CLM" else None, offset=offset
                )
                assert_page(res, order[offset : offset + top_k], scores, engine.index)
                assert res.offset == offset
                assert res.next_offset == (offset + top_k if offset + top_k < n else 0)


def test_consecutive_pages_tile_the_ranking(engine: SearchEngine, queries) -> None:
    q_cm, q_cl = queries[0]
    seen: list[str] = []
    offset = 0
    while True:
        res = engine.search_vectors(q_cm, q_cl, 9, "CLM", offset=offset)
        seen += [h.id for h in res.hits]
        if not res.next_offset:
            break
        offset = res.next_offset
    whole = engine.search_vectors(q_cm, q_cl, engine.index.count, "CLM")
    assert seen == [h.id for h in whole.hits] and len(seen) == engine.index.count


def test_min_score_keeps_exactly_the_hits_above_it(engine: SearchEngine, queries) -> None:
    for q_cm, q_cl in queries:
        scores = brute(engine.index, q_cm, q_cl, 0.5)
        order = ranking(scores)
        for rank in (0, 4, 11):
            cut = float((scores[order[rank]][0] + scores[order[rank + 1]][0]) / 2)
            res = engine.search_vectors(q_cm, q_cl, 50, "CLM", 0.5, min_score=cut)
            want = [i for i in order if scores[i][0] >= round(cut, 6)][:50]
            assert_page(res, want, scores, engine.index)
            assert res.next_offset == 0
            # with paging: the cutoff applies to the whole ranking, the page is cut from what is left
            res = engine.search_vectors(q_cm, q_cl, 3, "CLM", 0.5, min_score=cut, offset=2)
            assert_page(res, want[2:5], scores, engine.index)
            assert res.next_offset == (5 if len(want) > 5 else 0)
        assert engine.search_vectors(q_cm, q_cl, 10, "CLM", 0.5, min_score=1.0).hits == []


def test_min_score_with_a_tag_filter(tiny_annotated_bundle: Path, tiny_annotated_index: Path) -> None:
    """The cutoff among the eligible images only (the index of the bundle with a tagger: predicted tags)."""
    bundle = Bundle(tiny_annotated_bundle)
    index = ImageIndex.load(tiny_annotated_index, bundle)
    engine = SearchEngine(bundle, index, persist=False)
    tag, count = max(index.tag_counts().items(), key=lambda kv: kv[1])
    assert 5 <= count < index.count
    allowed = set(index.ids_with_tags([tag]).tolist())
    q_cm, q_cl = engine.encode_query("动物")
    for mode, a in (("CL", 1.0), ("CM", 0.0)):
        scores = {i: s for i, s in brute(index, q_cm, q_cl, a).items() if i in allowed}
        order = ranking(scores)
        cut = float((scores[order[count // 2]][0] + scores[order[count // 2 + 1]][0]) / 2)
        res = engine.search_vectors(q_cm, q_cl, 100, mode, tags=[tag], min_score=cut)
        assert_page(res, [i for i in order if scores[i][0] >= cut], scores, index)
        assert all(tag in h.tags for h in res.hits)


def test_search_by_indexed_id_ranks_by_image_similarity_without_itself(engine: SearchEngine) -> None:
    index = engine.index
    visual = engine.bundle.cl_space == "visual"
    for i in index.int_ids()[::23][:6]:
        (meta,) = index.metadata([int(i)])
        q = index.image_vectors(np.array([i]))[0]
        scores = brute(index, q, q if visual else None, 0.0)
        order = [j for j in ranking(scores) if j != int(i)]
        for offset in (0, 4):
            request = search_request(
                "", 6, None, None, None, engine.limits, offset=offset, image=ImageRef(image_id=meta.id)
            )
            res = engine.run(request)
            assert res.mode == "CM" and res.alpha == 0.0
            assert_page(res, order[offset : offset + 6], scores, index)
            assert meta.id not in [h.id for h in res.hits]


def test_search_by_image_bytes_finds_the_image_first(engine: SearchEngine, tiny_manifest: Path) -> None:
    manifest = read_manifest(tiny_manifest)
    index = engine.index
    for rec in manifest.split("test")[:3]:
        data = manifest.image_path(rec).read_bytes()
        res = engine.run(
            search_request("", 8, "cm", None, None, engine.limits, image=ImageRef(image_bytes=data))
        )
        q = index.image_vectors(np.array([index.int_id(rec.id)]))[0]  # what the indexer stored for this file
        scores = brute(index, q, q if engine.bundle.cl_space == "visual" else None, 0.0)
        assert_page(res, ranking(scores)[:8], scores, index)
        assert res.hits[0].cm_score == pytest.approx(1.0, abs=1e-5)
        same = [h.id for h in res.hits if h.cm_score == pytest.approx(1.0, abs=1e-5)]
        assert rec.id in same  # an identical stamp elsewhere would tie with it


def test_validation_of_the_new_fields(engine: SearchEngine) -> None:
    lim = engine.limits
    some_id = engine.index.metadata([0])[0].id
    bad = [
        {"query": "猫", "image": ImageRef(image_id=some_id)},  # a text and an image
        {"query": "", "image": ImageRef()},  # neither bytes nor id
        {"query": "", "image": ImageRef(image_bytes=b"x", image_id=some_id)},
        {"query": "", "image": ImageRef(image_id=some_id), "mode": "CL"},  # an image ranks by CM
        {"query": "猫", "offset": -1},
        {"query": "猫", "offset": lim.max_offset + 1},
        {"query": "猫", "offset": 1.5},
        {"query": "猫", "min_score": float("nan")},
        {"query": "猫", "min_score": 1.01},
        {"query": "猫", "min_score": "0.2"},
        {"query": "猫", "min_score": True},
    ]
    for fields in bad:
        query = fields.pop("query")
        with pytest.raises(InvalidArgument):
            search_request(query, 5, limits=lim, **fields)
    with pytest.raises(NotFound):
        engine.run(search_request("", 5, None, None, None, lim, image=ImageRef(image_id="no/such/image")))
    req = search_request("猫", 5, None, None, None, lim, min_score=0.1234567, offset=3)
    assert (req.mode, req.min_score, req.offset, req.image) == ("CLM", 0.123457, 3, None)
    req = search_request("", 5, None, None, None, lim, image=ImageRef(image_bytes=b"png"))
    assert req.mode == "CM" and req.image_key.startswith("sha256:") and req.exclude_id == ""
    assert (
        search_request("", 5, None, None, None, lim, image=ImageRef(image_id=some_id)).exclude_id == some_id
    )
