"""SearchEngine on a real bundle and real Tux Paint images: exact fusion equals brute force over every image, tag
filter, validation, add/delete (also while searching) and persistence. The brute-force equivalence runs against both
index backends: the FAISS folder and Milvus (Milvus Lite in a file under tmp_path)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from xlsearch.bundle.runtime import Bundle
from xlsearch.data.manifest import Manifest, Record, read_manifest
from xlsearch.encode.preprocess import load_image
from xlsearch.errors import Code
from xlsearch.index.backend import IndexBackend
from xlsearch.index.image_index import ImageIndex, ImageMeta
from xlsearch.search.engine import SearchEngine
from xlsearch.search.errors import ImageTooLarge, InvalidArgument, InvalidImage, InvalidQuery, NotFound
from xlsearch.search.types import Limits, NewImage, SearchResult

MAX_IMAGES = 150  # the test split + some others: enough to make depth matter, small enough to stay fast
K = 10


@dataclass
class Collection:
    bundle: Bundle
    manifest: Manifest
    records: list[Record]  # indexed, in int id order
    others: list[Record]  # not indexed (material for add_images)
    index: ImageIndex
    folder: Path  # a saved copy of `index`
    queries: list[str]
    qvecs: list[tuple[np.ndarray, np.ndarray]]
    metas: list[ImageMeta]  # what was added, in int id order
    img: np.ndarray
    caps: list[np.ndarray | None]


def uncaptioned(i: int) -> bool:
    return i % 10 == 7  # ~10% of the images lose their caption: exercises the CL imputation and its bound


def tags_of(i: int, rec: Record) -> tuple[str, ...]:
    return (rec.id.split("/")[0], "甲" if i % 2 == 0 else "乙")


@pytest.fixture(scope="module")
def coll(tiny_bundle: Path, tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Collection:
    bundle, manifest = Bundle(tiny_bundle), read_manifest(tiny_manifest)
    test = [r for r in manifest.split("test") if r.zh]
    rest = [r for r in manifest.records if r.split != "test"]
    records = (test + rest)[: max(MAX_IMAGES, len(test))]
    others = rest[max(0, len(records) - len(test)) :][:20]
    images = [load_image(manifest.image_path(r)) for r in records]
    img = np.concatenate([bundle.encode_images(images[i : i + 16]) for i in range(0, len(images), 16)])
    metas = [
        ImageMeta(r.id, str(manifest.image_path(r)), () if uncaptioned(i) else tuple(r.en), tags_of(i, r))
        for i, r in enumerate(records)
    ]
    captioned = [i for i, m in enumerate(metas) if m.has_caption]
    cap_vecs = bundle.cl_vectors([metas[i].caption for i in captioned], "en")
    caps: list[np.ndarray | None] = [None] * len(records)
    for i, v in zip(captioned, cap_vecs, strict=True):
        caps[i] = v
    index = ImageIndex.create(bundle)
    index.add(metas, img, caps)
    np.testing.assert_array_equal(index.image_vectors(np.arange(3)), img[:3])  # stored == computed
    folder = index.save(tmp_path_factory.mktemp("search") / "index")
    engine = SearchEngine(bundle, index, persist=False)
    queries = [s for r in test for s in r.zh]
    q_cm, q_cl = engine.encode_queries(queries)  # one batch: far fewer ONNX calls than one per query
    return Collection(
        bundle,
        manifest,
        records,
        others,
        index,
        folder,
        queries,
        list(zip(q_cm, q_cl, strict=True)),
        metas,
        img,
        caps,
    )


@pytest.fixture(scope="module", params=["faiss", "milvus"])
def backend(
    request: pytest.FixtureRequest, coll: Collection, tmp_path_factory: pytest.TempPathFactory
) -> IndexBackend:
    """The collection's index on each backend: the FAISS ImageIndex, or the same images added to a Milvus Lite
    collection (read back exactly: float32 vectors)."""
    if request.param == "faiss":
        return coll.index
    pytest.importorskip("pymilvus")
    from xlsearch.index.milvus import MilvusIndex

    uri = str(tmp_path_factory.mktemp("milvus") / "search.db")
    index = MilvusIndex.create(uri, "search", coll.bundle)
    index.add(coll.metas, coll.img, coll.caps)
    ids = np.array([index.int_id(m.id) for m in coll.metas])
    np.testing.assert_array_equal(index.image_vectors(ids), coll.img)  # stored == computed, exactly
    captioned = [n for n, c in enumerate(coll.caps) if c is not None]
    np.testing.assert_array_equal(
        index.caption_vectors(ids[captioned]), np.stack([coll.caps[n] for n in captioned])
    )
    assert (index.count, index.uncaptioned_count) == (coll.index.count, coll.index.uncaptioned_count)
    return index


@pytest.fixture
def live(coll: Collection, tmp_path: Path) -> SearchEngine:
    """A fresh engine on a private copy of the collection's index, persisting to tmp_path/index."""
    index = ImageIndex.load(coll.folder, coll.bundle)
    index.save(tmp_path / "index")
    return SearchEngine(coll.bundle, index)


# -- brute force ----------------------------------------------------------------------------------------------------
def brute(
    index: IndexBackend, q_cm: np.ndarray, q_cl: np.ndarray, a: float, allowed: np.ndarray | None = None
) -> dict[int, tuple[float, float, float]]:
    """int id -> (fused, cl, cm) for every (allowed) image, by numpy over all stored vectors (every live id, read
    back by id). Images without a caption take CM as CL (the engine's documented rule)."""
    ids, img, has, caps = _stored(index)
    cm = img @ q_cm.astype(np.float64)
    cl = cm.copy()
    cl[has] = caps @ q_cl.astype(np.float64)
    fused = a * cl + (1 - a) * cm
    keep = set(allowed.tolist()) if allowed is not None else None
    return {int(i): (fused[n], cl[n], cm[n]) for n, i in enumerate(ids) if keep is None or int(i) in keep}


_STORED: dict[tuple[int, str, int], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}


def _stored(index: IndexBackend) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ids, image vectors, has caption, caption vectors of the captioned) of every live image, per version."""
    key = (id(index), index.uid, index.version)
    if key not in _STORED:
        ids = np.asarray(index.ids_with_tags([]))
        assert len(ids) == index.count
        has = index.has_caption(ids)
        img = index.image_vectors(ids).astype(np.float64)
        _STORED[key] = (ids, img, has, index.caption_vectors(ids[has]).astype(np.float64))
    return _STORED[key]


def assert_matches_brute(
    res: SearchResult, scores: dict[int, tuple[float, float, float]], index: IndexBackend
) -> None:
    """Same top-k ids (up to exact-score ties) and the same fused, CL and CM scores."""
    ranked = sorted(scores, key=lambda i: (-scores[i][0], i))[:K]
    assert len(res.hits) == len(ranked)
    for hit, want in zip(res.hits, ranked, strict=True):
        got = index.int_id(hit.id)
        if got != want:  # allowed only for a tie
            assert scores[got][0] == pytest.approx(scores[want][0], abs=1e-6), (hit.id, got, want)
        f, cl, cm = scores[got]
        assert (hit.score, hit.cl_score, hit.cm_score) == pytest.approx((f, cl, cm), abs=1e-5)


# -- exact fusion ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [None, 1], ids=["default-depth", "depth-1"])
def test_fusion_equals_brute_force_over_all_images(
    coll: Collection, backend: IndexBackend, depth: int | None
) -> None:
    """For every test-split query, CL, CM and CLM (bundle alpha and 0.5) rank like brute force over all images, on
    each backend; with initial depth 1 the threshold loop has to iterate."""
    engine = SearchEngine(coll.bundle, backend, persist=False, initial_depth=depth)
    rounds = []
    for q_cm, q_cl in coll.qvecs:
        for mode, alpha in (("CL", None), ("CM", None), ("CLM", None), ("CLM", 0.5)):
            a = {"CL": 1.0, "CM": 0.0}.get(mode, coll.bundle.alpha if alpha is None else alpha)
            res = engine.search_vectors(q_cm, q_cl, K, mode, alpha)
            assert res.alpha == a and res.exact
            assert_matches_brute(res, brute(backend, q_cm, q_cl, a), backend)
            rounds.append(res.rounds)
    assert len(coll.qvecs) >= 10
    if depth == 1:
        assert max(rounds) >= 4  # 1 -> 2 -> 4 -> 8 -> ... really iterated


def test_search_encodes_like_encode_query(coll: Collection) -> None:
    engine = SearchEngine(coll.bundle, coll.index, persist=False)
    for q in coll.queries[:3]:
        res = engine.search(q, K, "CLM")
        q_cm, q_cl = engine.encode_query(q)
        assert [h.id for h in res.hits] == [h.id for h in engine.search_vectors(q_cm, q_cl, K).hits]
        assert list(res.timings) == ["tokenize", "encode", "search", "fuse", "metadata"]
        assert res.alpha == coll.bundle.alpha and res.index_version == coll.index.version
    hit = res.hits[0]
    meta = engine.get(hit.id)
    assert (hit.uri, hit.caption, hit.tags, hit.has_caption) == (
        meta.uri,
        meta.caption,
        list(meta.tags),
        meta.has_caption,
    )


def test_uncaptioned_images_take_cm_as_cl(coll: Collection, backend: IndexBackend) -> None:
    engine = SearchEngine(coll.bundle, backend, persist=False)
    q_cm, q_cl = coll.qvecs[0]
    hits = engine.search_vectors(q_cm, q_cl, 1000, "CM").hits
    assert len(hits) == backend.count
    bare = [h for h in hits if not h.has_caption]
    assert len(bare) == sum(uncaptioned(i) for i in range(len(coll.records)))
    assert all(h.cl_score == h.cm_score and h.caption == "" for h in bare)
    assert all(h.cl_score != h.cm_score for h in hits if h.has_caption)


def test_tag_filter_equals_brute_force_on_tagged_images(coll: Collection, backend: IndexBackend) -> None:
    engine = SearchEngine(coll.bundle, backend, persist=False, initial_depth=2)
    counts = backend.tag_counts()
    assert counts == coll.index.tag_counts()
    common = max((t for t in counts if t not in ("甲", "乙")), key=counts.get)
    rare = min((t for t in counts if t not in ("甲", "乙")), key=counts.get)
    for tags in ([common], [common, "乙"], [rare]):
        allowed = backend.ids_with_tags(tags)
        assert len(allowed) == len(coll.index.ids_with_tags(tags))
        # Milvus Lite answers one search in ~10-25 ms (pure Python server): fewer queries keep the test short
        for q_cm, q_cl in coll.qvecs[: 15 if backend is coll.index else 5]:
            for mode, a in (("CLM", coll.bundle.alpha), ("CL", 1.0), ("CM", 0.0)):
                res = engine.search_vectors(q_cm, q_cl, K, mode, tags=tags)
                assert all(set(tags) <= set(h.tags) for h in res.hits)
                assert_matches_brute(res, brute(backend, q_cm, q_cl, a, allowed), backend)
                assert len(res.hits) == min(K, len(allowed))  # filtered inside the search, not after top-k
    assert engine.search(coll.queries[0], K, tags=["没有这个标签"]).hits == []


# -- validation -----------------------------------------------------------------------------------------------------
def test_validation_errors(coll: Collection) -> None:
    engine = SearchEngine(
        coll.bundle, coll.index, persist=False, limits=Limits(max_query_chars=20, max_top_k=50)
    )
    bad_queries = ["", "   \n\t", "长" * 21, None, 42]
    for q in bad_queries:
        with pytest.raises(InvalidQuery):
            engine.search(q, 5)  # type: ignore[arg-type]
    for kwargs in (
        {"top_k": 0},
        {"top_k": 51},
        {"top_k": 2.5},
        {"top_k": True},
        {"alpha": -0.01},
        {"alpha": 1.01},
        {"alpha": float("nan")},
        {"alpha": "0.5"},
        {"mode": "XL"},
        {"mode": 3},  # None is the default (CLM for a text, CM for an image)
        {"tags": [""]},
        {"tags": ["a"] * 33},
    ):
        with pytest.raises(InvalidArgument):
            engine.search("猫", **{"top_k": 5, **kwargs})
    with pytest.raises(InvalidArgument, match="needs a CL query vector"):
        engine.search_vectors(coll.qvecs[0][0], None, 5, "CLM")
    with pytest.raises(NotFound):
        engine.get("no-such-image")
    assert issubclass(InvalidQuery, InvalidArgument) and InvalidQuery.code is Code.INVALID_ARGUMENT
    assert NotFound.code is Code.NOT_FOUND and ImageTooLarge.code is Code.RESOURCE_EXHAUSTED
    assert engine.search("猫", 5, "clm").hits  # mode is case-insensitive; 20 chars is still fine
    assert engine.search("长" * 20, 5).hits


@pytest.mark.parametrize("query", ["🐸🐸🐸", "。。。！", "hello world", "a", "\u200b青蛙\u200b", "👍 " * 100])
def test_odd_queries_still_return_results(coll: Collection, query: str) -> None:
    engine = SearchEngine(coll.bundle, coll.index, persist=False)
    res = engine.search(query, 5, "CLM")
    assert len(res.hits) == 5 and all(np.isfinite(h.score) for h in res.hits)


# -- add / delete ---------------------------------------------------------------------------------------------------
def _png(coll: Collection, n: int) -> bytes:
    """Bytes of a real image, preferably one that is not indexed yet (a tiny manifest may have none left)."""
    pool = coll.others or coll.records
    return coll.manifest.image_path(pool[n % len(pool)]).read_bytes()


def test_add_delete_and_persist(coll: Collection, live: SearchEngine) -> None:
    v0, n0 = live.version, live.index.count
    data = _png(coll, 0)
    ids = live.add_images(
        [
            NewImage(data, id="new/with-caption", caption="A green frog on a leaf.", uri="s3://x/1.png"),
            NewImage(data),
        ]
    )
    assert ids[0] == "new/with-caption"
    assert len(ids[1]) == 64 and ids[1] == __import__("hashlib").sha256(data).hexdigest()
    assert live.index.count == n0 + 2 and live.version == v0 + 1
    assert live.get(ids[1]).has_caption is False
    # the same bytes under the same id replace the entry (no duplicate); the caption is updated
    live.add_images([NewImage(data, id="new/with-caption", caption="A frog.")])
    assert live.index.count == n0 + 2 and live.get("new/with-caption").caption == "A frog."
    np.testing.assert_allclose(
        live.image_vector(ids[1]), coll.bundle.encode_images([load_image(data)])[0], atol=1e-6
    )
    # an added image is findable by its own vector, with exact scores
    res = live.search_vectors(live.image_vector(ids[1]), None, 3, "CM")
    assert ids[1] in [h.id for h in res.hits] and res.hits[0].cm_score == pytest.approx(1.0, abs=1e-4)
    deleted, missing = live.delete([ids[1], "ghost", coll.records[0].id])
    assert (deleted, missing) == ([ids[1], coll.records[0].id], ["ghost"])
    assert live.index.count == n0 and live.version == v0 + 3
    assert live.delete(["ghost"]) == ([], ["ghost"]) and live.version == v0 + 3
    # every change was persisted atomically
    back = ImageIndex.load(live.folder, coll.bundle)
    assert (back.count, back.version) == (live.index.count, live.version)
    assert back.metadata([back.int_id("new/with-caption")])[0].caption == "A frog."
    stats = live.stats()
    assert stats.images == n0 and stats.index_version == v0 + 3 and stats.saved_version == v0 + 3
    assert stats.bundle_hash == coll.bundle.content_hash and stats.default_alpha == coll.bundle.alpha


def test_add_rejects_bad_images_all_or_nothing(coll: Collection, live: SearchEngine) -> None:
    n0, v0 = live.index.count, live.version
    good = _png(coll, 1)
    with pytest.raises(InvalidImage):
        live.add_images([NewImage(good, id="ok"), NewImage(b"\x89PNG\r\n\x1a\n not really", id="bad")])
    with pytest.raises(InvalidImage):
        live.add_images([NewImage(b"")])
    small = SearchEngine(coll.bundle, live.index, persist=False, limits=Limits(max_image_bytes=len(good) - 1))
    with pytest.raises(ImageTooLarge):
        small.add_images([NewImage(good)])
    tiny = SearchEngine(coll.bundle, live.index, persist=False, limits=Limits(max_image_pixels=100))
    with pytest.raises(ImageTooLarge, match="pixels"):
        tiny.add_images([NewImage(good)])
    with pytest.raises(InvalidArgument, match="caption"):
        live.add_images([NewImage(good, caption="x" * 5000)])
    assert (live.index.count, live.version) == (n0, v0)
    assert live.add_images([]) == [] and live.version == v0


def test_add_and_delete_while_searching(coll: Collection, live: SearchEngine) -> None:
    """Readers search continuously while a writer adds and deletes; no reader fails or sees a torn state, and the
    final state is consistent with brute force and with what was persisted."""
    stop, errors, searched = threading.Event(), [], [0]
    qvecs = coll.qvecs[:8]

    def reader(real: bool) -> None:
        try:
            while not stop.is_set():
                for n, (q_cm, q_cl) in enumerate(qvecs):
                    res = (
                        live.search(coll.queries[n], K, "CLM")
                        if real and n == 0
                        else live.search_vectors(q_cm, q_cl, K, "CLM", tags=["甲"] if n % 2 else None)
                    )
                    ids, scores = [h.id for h in res.hits], [h.score for h in res.hits]
                    assert len(ids) == K and len(set(ids)) == K
                    assert scores == sorted(scores, reverse=True)
                    searched[0] += 1
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(i == 0,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        added = []
        for step in range(3):
            items = [
                NewImage(
                    _png(coll, 2 + 3 * step + j),
                    id=f"live/{step}/{j}",
                    caption=f"picture {step} {j}" if j else None,
                )
                for j in range(3)
            ]
            added += live.add_images(items)
            live.delete([coll.records[10 + step].id, added[0] if step == 2 else "ghost"])
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors
    assert searched[0] > 0
    index = live.index
    assert index.count == len(coll.records) + 9 - 4
    assert index.int_id(added[0]) is None and index.int_id(added[-1]) is not None
    a = coll.bundle.alpha
    for q_cm, q_cl in qvecs[:4]:
        assert_matches_brute(live.search_vectors(q_cm, q_cl, K, "CLM"), brute(index, q_cm, q_cl, a), index)
    back = SearchEngine(coll.bundle, ImageIndex.load(live.folder, coll.bundle), persist=False)
    assert back.version == live.version
    for q_cm, q_cl in qvecs[:4]:
        assert [h.id for h in back.search_vectors(q_cm, q_cl, K).hits] == [
            h.id for h in live.search_vectors(q_cm, q_cl, K).hits
        ]
