"""The Milvus backend's shared state (Milvus Lite in tmp_path, two clients = two replicas): every reader sees the
version a writer's change produced (the number caches key on), within its refresh period and not before; a
re-index behind the alias reaches every reader with a new uid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xlsearch.index.key import BundleKey
from xlsearch.index.metadata import ImageMeta

pytestmark = pytest.mark.distributed
pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

KEY = BundleKey("ab" * 32, 8, "visual", 8, 0)


def rows(ids: list[str], seed: int) -> tuple[list[ImageMeta], np.ndarray, list[np.ndarray | None]]:
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((len(ids), 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    metas = [ImageMeta(i, f"file:{i}.png", (f"A {i}.",), ("标签",)) for i in ids]
    return metas, vecs, list(vecs)


def test_readers_see_a_writers_version_within_their_refresh(tmp_path: Path) -> None:
    from xlsearch.index.milvus import MilvusIndex

    uri = str(tmp_path / "m.db")
    a = MilvusIndex.create(uri, "c", KEY, refresh_seconds=0)
    b = MilvusIndex.open(uri, "c", KEY, refresh_seconds=0)
    lagging = MilvusIndex.open(uri, "c", KEY, refresh_seconds=3600)
    v0 = b.version
    assert a.version == v0 == lagging.version and a.uid == b.uid
    a.add(*rows(["x", "y"], 0))
    assert b.version == a.version == v0 + 1 and b.count == 2
    assert b.int_id("x") is not None and b.metadata([b.int_id("x")])[0].tags == ("标签",)
    assert lagging.version == v0  # not re-read yet: a replica's results may lag by its refresh period
    lagging.refresh(force=True)
    assert lagging.version == v0 + 1 and lagging.count == 2
    removed, missing = b.remove(["x", "nope"])
    assert (removed, missing) == (["x"], ["nope"])
    assert a.version == v0 + 2 and a.int_id("x") is None and a.count == 1
    # a replaced image gets a new int id (cached rows by int id are never stale)
    old = a.int_id("y")
    b.add(*rows(["y"], 1))
    new = a.int_id("y")
    assert new is not None and new != old and a.count == 1 and a.version == v0 + 3
    np.testing.assert_allclose(a.image_vectors(np.array([new])), rows(["y"], 1)[1], atol=1e-6)
    for ix in (a, b, lagging):
        ix.close()


def test_a_reindex_behind_the_alias_reaches_every_reader(tmp_path: Path) -> None:
    from xlsearch.index.milvus import MilvusIndex

    uri = str(tmp_path / "m.db")
    served = MilvusIndex.create(uri, "c", KEY)
    served.add(*rows(["old"], 0))
    reader = MilvusIndex.open(uri, "c", KEY, refresh_seconds=0)
    uid = reader.uid
    assert reader.int_id("old") is not None
    fresh = MilvusIndex.create(uri, "c", KEY, alias=False)  # what `xlsearch index --backend milvus` builds
    fresh.add(*rows(["new1", "new2"], 2))
    assert reader.count == 1  # not served until published
    fresh.publish()
    assert reader.count == 2 and reader.uid != uid  # a new uid: every cache key of the old collection is dead
    assert reader.int_id("old") is None and reader.int_id("new1") is not None
    for ix in (served, reader, fresh):
        ix.close()
