"""ImageIndex: folder round trip, atomic save, bundle mismatch, approximate factories, tags. Random unit vectors:
no bundle needed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import xlsearch.index.snapshot as snapshot_mod
from xlsearch.index.factory import parse_factory
from xlsearch.index.image_index import BundleKey, ImageIndex, ImageMeta, IndexFormatError, IndexMismatchError

DIM, CL_DIM = 32, 16
KEY = BundleKey("bundle-a", DIM, "sentence", CL_DIM)


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_items(n: int, seed: int = 0) -> tuple[list[ImageMeta], np.ndarray, list[np.ndarray | None]]:
    """Every 4th image has no caption; tags: parity and 'three' for multiples of 3."""
    rng = np.random.default_rng(seed)
    metas = []
    for i in range(n):
        tags = ("even" if i % 2 == 0 else "odd",) + (("three",) if i % 3 == 0 else ())
        caps = () if i % 4 == 3 else (f"caption {i}", f"second caption {i}")
        metas.append(ImageMeta(f"img-{i:03d}", f"/images/{i}.png", caps, tags))
    cap = unit(rng, n, CL_DIM)
    return metas, unit(rng, n, DIM), [cap[i] if m.has_caption else None for i, m in enumerate(metas)]


@pytest.fixture
def filled() -> tuple[ImageIndex, np.ndarray, list[np.ndarray | None]]:
    metas, img, cap = make_items(60)
    ix = ImageIndex.create(KEY)
    ix.add(metas, img, cap)
    return ix, img, cap


def test_parse_factory() -> None:
    assert parse_factory("Flat").name == "IDMap,Flat"
    assert parse_factory("IDMap,Flat").exact
    assert parse_factory("IDMap,HNSW32").name == "HNSW32"
    spec = parse_factory("IVFauto,PQ8x4")
    assert (spec.kind, spec.nlist, spec.codec) == ("ivf", None, "PQ8x4")
    assert parse_factory("IVF256,Flat").nlist == 256
    for bad in ("LSH", "IVF0,Flat", "HNSW", "IVF12"):
        with pytest.raises(ValueError):
            parse_factory(bad)


def test_add_search_metadata(filled) -> None:
    ix, img, cap = filled
    assert (ix.count, ix.caption_count, ix.uncaptioned_count, ix.version) == (60, 45, 15, 1)
    scores, ids = ix.search_images(img[7], 3)
    assert ids[0] == ix.int_id("img-007") and scores[0] == pytest.approx(1.0, abs=1e-5)
    scores, ids = ix.search_captions(cap[5], 3)
    assert ids[0] == ix.int_id("img-005")
    # only captioned images are in the caption table
    _, all_cap = ix.search_captions(cap[5], 1000)
    assert len(all_cap) == 45 and ix.has_caption(all_cap).all()
    m = ix.metadata([ix.int_id("img-006")])[0]
    assert (m.uri, m.caption, m.tags) == ("/images/6.png", "caption 6", ("even", "three"))
    np.testing.assert_array_equal(ix.image_vectors(np.array([ix.int_id("img-010")]))[0], img[10])


def test_tags_are_and_filters_inside_search(filled) -> None:
    ix, img, _ = filled
    allowed = ix.ids_with_tags(["even", "three"])
    assert [m.id for m in ix.metadata(allowed)] == [f"img-{i:03d}" for i in range(0, 60, 6)]
    assert len(ix.ids_with_tags(["even", "nope"])) == 0
    _, ids = ix.search_images(img[1], 5, allowed)  # img-001 is odd: not allowed
    assert len(ids) == 5 and set(ids) <= set(allowed)


def test_replace_and_remove(filled) -> None:
    ix, img, cap = filled
    old = ix.int_id("img-001")
    v = ix.version
    new_vec = unit(np.random.default_rng(9), 1, DIM)
    ix.add([ImageMeta("img-001", "/new.png")], new_vec, [None])  # replaced, now without caption
    assert ix.count == 60 and ix.caption_count == 44 and ix.version == v + 1
    assert ix.int_id("img-001") != old
    _, ids = ix.search_images(new_vec[0], 1)
    assert ix.metadata(ids)[0].uri == "/new.png"
    removed, missing = ix.remove(["img-002", "ghost", "img-002"])
    assert (removed, missing) == (["img-002"], ["ghost"]) and ix.count == 59 and ix.version == v + 2
    assert ix.remove(["ghost"]) == ([], ["ghost"]) and ix.version == v + 2  # no change, no bump
    _, ids = ix.search_images(img[2], 60)
    assert ix.int_id("img-002") is None and len(ids) == 59


def test_add_validates(filled) -> None:
    ix, img, cap = filled
    with pytest.raises(ValueError, match="caption vector"):
        ix.add([ImageMeta("x", captions=("a",))], img[:1], [None])
    with pytest.raises(ValueError, match="shape"):
        ix.add([ImageMeta("x")], img[:1, :5], None)
    with pytest.raises(ValueError, match="non-finite"):
        ix.add([ImageMeta("x")], np.full((1, DIM), np.nan, np.float32), None)
    assert ix.count == 60 and ix.version == 1


def test_round_trip(filled, tmp_path: Path) -> None:
    ix, img, _ = filled
    ix.remove(["img-004"])
    ix.report = {"skipped": []}
    folder = ix.save(tmp_path / "index")
    names = {p.name for p in folder.iterdir()}
    assert {"manifest.json", "images.faiss", "captions.faiss", "metadata.sqlite", "report.json"} <= names
    m = json.loads((folder / "manifest.json").read_text())
    assert m["format"] == "xlsearch-index/1" and m["metric"] == "inner_product"
    assert (m["count"], m["captions"], m["version"], m["dim"], m["cl_dim"]) == (59, 44, 2, DIM, CL_DIM)
    back = ImageIndex.load(folder, KEY)
    assert (back.count, back.caption_count, back.version, back.factory) == (59, 44, 2, "IDMap,Flat")
    assert back.metadata([back.int_id("img-009")]) == ix.metadata([ix.int_id("img-009")])
    for q in img[:5]:
        for a, b in zip(ix.search_images(q, 10), back.search_images(q, 10), strict=True):
            np.testing.assert_array_equal(a, b)
    assert back.report == {"skipped": []} and back.folder == folder
    back.add([ImageMeta("late")], img[:1], None)  # ids keep counting after a reload
    assert back.int_id("late") == 60


def test_save_is_atomic(filled, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ix, _, _ = filled
    folder = ix.save(tmp_path / "index")
    ix.remove(["img-000"])

    def broken(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(snapshot_mod, "write_metadata", broken)
    with pytest.raises(OSError, match="disk full"):
        ix.save(folder)
    assert [p.name for p in tmp_path.iterdir()] == ["index"]  # no temp folder left behind
    assert ImageIndex.load(folder).count == 60  # the previous version is intact
    monkeypatch.undo()
    ix.save(folder)
    assert ImageIndex.load(folder).count == 59
    # a crash between the two renames leaves only .index.old-*: load puts it back
    folder.rename(tmp_path / ".index.old-deadbeef")
    assert ImageIndex.load(folder).count == 59
    assert [p.name for p in tmp_path.iterdir()] == ["index"]


def test_load_refuses_other_bundle(filled, tmp_path: Path) -> None:
    ix, _, _ = filled
    folder = ix.save(tmp_path / "index")
    for other in (
        BundleKey("bundle-b", DIM, "sentence", CL_DIM),
        BundleKey("bundle-a", DIM, "visual", CL_DIM),
        BundleKey("bundle-a", 64, "sentence", CL_DIM),
    ):
        with pytest.raises(IndexMismatchError, match="another bundle"):
            ImageIndex.load(folder, other)
    manifest = {  # a bundle manifest (dict) is parsed by the typed schema
        "content_hash": "bundle-b",
        "dim": DIM,
        "fusion": {"cl_space": "visual"},
        "image_encoder": {"file": "image_encoder.onnx", "dim": DIM, "preprocess": {}},
        "text_encoders": {},
    }
    with pytest.raises(IndexMismatchError, match="bundle_hash.*cl_space"):
        ImageIndex.load(folder, manifest)


def test_load_refuses_broken_folders(filled, tmp_path: Path) -> None:
    ix, _, _ = filled
    with pytest.raises(IndexFormatError, match="no manifest.json"):
        ImageIndex.load(tmp_path)
    folder = ix.save(tmp_path / "index")
    m = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(dict(m, count=61)))
    with pytest.raises(IndexFormatError, match="inconsistent"):
        ImageIndex.load(folder)
    (folder / "manifest.json").write_text(json.dumps(dict(m, format="other/1")))
    with pytest.raises(IndexFormatError, match="format"):
        ImageIndex.load(folder)


@pytest.mark.parametrize("factory", ["HNSW32", "IVFauto,Flat", "IVF4,PQ8x4"])
def test_approximate_factories(factory: str, tmp_path: Path) -> None:
    metas, img, cap = make_items(300, seed=1)
    ix = ImageIndex.create(KEY, factory)
    ix.add(metas, img, cap)
    assert not ix.exact
    exact = ImageIndex.create(KEY)
    exact.add(metas, img, cap)
    hits = 0
    for i in range(0, 300, 10):
        _, ids = ix.search_images(img[i], 10)
        assert len(ids) == 10
        hits += ids[0] == ix.int_id(metas[i].id)
    assert hits >= 27  # a stored vector finds itself (PQ is lossy, HNSW/IVF approximate)
    # stored vectors: exact where the index holds them (HNSW, IVF-Flat: one copy), float16 beside lossy PQ codes
    some = np.array([ix.int_id(metas[i].id) for i in (3, 50, 299)])
    if "PQ" in factory:
        np.testing.assert_allclose(ix.image_vectors(some), img[[3, 50, 299]], atol=1e-3)
    else:
        np.testing.assert_array_equal(ix.image_vectors(some), img[[3, 50, 299]])
    # tag filter and removal work (HNSW: tombstones excluded at search time)
    allowed = ix.ids_with_tags(["three"])
    _, ids = ix.search_images(img[0], 20, allowed)
    assert set(ids) <= set(allowed)
    ix.remove([metas[0].id])
    _, ids = ix.search_images(img[0], 5)
    assert ix.count == 299 and len(ids) == 5 and not set(ids) & {0}
    folder = ix.save(tmp_path / "ix")
    back = ImageIndex.load(folder, KEY)
    assert back.count == 299 and back.factory == ix.factory
    for q in img[5:8]:
        np.testing.assert_array_equal(back.search_images(q, 5)[1], ix.search_images(q, 5)[1])
    if factory.startswith("HNSW"):
        assert back.images.tombstones == {0}
        back.compact()
        assert not back.images.tombstones and not back.search_images(img[0], 5)[1].tolist().count(0)


def test_ivf_needs_enough_training_vectors() -> None:
    metas, img, cap = make_items(20)
    ix = ImageIndex.create(KEY, "IVF64,Flat")
    with pytest.raises(ValueError, match="at least 64"):
        ix.add(metas, img, cap)
    assert ix.count == 0 and ix.version == 0  # nothing changed
    auto = ImageIndex.create(KEY, "IVFauto,Flat")
    auto.add(metas, img, cap)
    assert auto.images.nlist == 1 and auto.count == 20


def test_features_round_trip_replace_and_remove(tmp_path: Path) -> None:
    """Backbone features (what Tag/Caption by id read) are stored per image, float16, and follow adds, replaces,
    removes and saves; an index of a bundle without a feature output stores none."""
    metas, img, cap = make_items(12)
    feats = unit(np.random.default_rng(5), 12, 40)
    ix = ImageIndex.create(BundleKey("bundle-a", DIM, "sentence", CL_DIM, feature_dim=40))
    ix.add(metas, img, cap, features=feats)
    got = ix.image_features(np.array([ix.int_id("img-003"), ix.int_id("img-000")]))
    np.testing.assert_allclose(got, feats[[3, 0]], atol=2e-3)
    ix.add([metas[3]], img[[4]], [cap[3]], features=feats[[7]])  # replace
    np.testing.assert_allclose(ix.image_features(np.array([ix.int_id("img-003")]))[0], feats[7], atol=2e-3)
    ix.remove(["img-000"])
    folder = ix.save(tmp_path / "index")
    back = ImageIndex.load(folder)
    assert back.features.count == back.count == 11 and back.key.feature_dim == 40
    np.testing.assert_allclose(
        back.image_features(np.array([back.int_id("img-003")]))[0], feats[7], atol=2e-3
    )
    # added without features: none stored, and the lookup says so instead of returning garbage
    back.add([ImageMeta("plain")], img[[0]])
    assert back.image_features(np.array([back.int_id("plain")])) is None
    no_features = ImageIndex.create(KEY)
    no_features.add(metas, img, cap, features=feats)  # ignored: this bundle has no feature output
    assert no_features.features.count == 0 and no_features.image_features(np.array([0])) is None


def test_load_removes_temp_folders_of_a_killed_save(filled, tmp_path: Path, caplog) -> None:
    ix, _, _ = filled
    folder = ix.save(tmp_path / "index")
    stale = tmp_path / ".index.tmp-deadbeef"  # what kill -9 during save leaves: a full-size copy
    stale.mkdir()
    (stale / "images.faiss").write_bytes(b"\0" * 4096)
    other = tmp_path / ".other.tmp-1234"  # another index's temp folder is not ours to remove
    other.mkdir()
    with caplog.at_level("WARNING", logger="xlsearch.common.atomic"):
        assert ImageIndex.load(folder).count == 60
    assert not stale.exists() and other.exists()
    assert "interrupted save" in caplog.text and "4096 bytes" in caplog.text


def test_saved_folder_follows_the_umask(filled, tmp_path: Path) -> None:
    import os

    ix, _, _ = filled
    old = os.umask(0o022)
    try:
        folder = ix.save(tmp_path / "index")
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0700


def test_the_faiss_folder_implements_the_backend_interface(filled, tmp_path: Path) -> None:
    """The engine's index interface (xlsearch.index.backend): ImageIndex reads and changes, IndexStore durability."""
    import threading

    from xlsearch.index.backend import DurableChanges, IndexBackend
    from xlsearch.index.store import IndexStore
    from xlsearch.search.locks import RWLock

    ix, _, _ = filled
    assert isinstance(ix, IndexBackend)
    store = IndexStore(ix, tmp_path / "index", RWLock(), threading.Lock())
    assert isinstance(store, DurableChanges)
    assert store.remove(["img-001", "nope"]) == (["img-001"], ["nope"])
    store.close()
    assert ImageIndex.load(tmp_path / "index").count == 59
