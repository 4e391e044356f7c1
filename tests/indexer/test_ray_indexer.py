"""``xlsearch index --ray``: the Ray Data job (a local Ray on 2 CPUs started here) gives the index the local job
gives on real Tux Paint stamps (same ids, metadata, vectors within float tolerance), and an interrupted Ray job
resumes from the per-chunk checkpoints it wrote (or a local job wrote)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from xlsearch.bundle.runtime import Bundle
from xlsearch.encode.pipeline import Checkpoint, Row
from xlsearch.index.image_index import BundleKey, ImageIndex
from xlsearch_indexer.cli import main as index_main
from xlsearch_indexer.job import IndexWriter, checkpoint_for
from xlsearch_indexer.sources import Source, manifest_source

pytestmark = pytest.mark.distributed
ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A local Ray on 2 CPUs for this module (the job joins a running Ray instead of starting one)."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path) -> Bundle:
    return Bundle(tiny_bundle, intra_op_threads=1)


def assert_same_index(got: ImageIndex, want: ImageIndex, ids: Sequence[str]) -> None:
    """Every id of ``ids`` is in both, with equal metadata and vectors (float tolerance: ONNX batches differ)."""
    for sid in ids:
        a, b = np.array([got.int_id(sid)]), np.array([want.int_id(sid)])
        assert a[0] is not None and b[0] is not None, sid
        assert got.metadata(a) == want.metadata(b), sid
        np.testing.assert_allclose(got.image_vectors(a), want.image_vectors(b), atol=1e-5, err_msg=sid)
        if want.metadata(b)[0].has_caption:
            np.testing.assert_allclose(
                got.caption_vectors(a), want.caption_vectors(b), atol=1e-5, err_msg=sid
            )
        fa, fb = got.image_features(a), want.image_features(b)
        assert (fa is None) == (fb is None)
        if fa is not None:
            np.testing.assert_allclose(fa, fb, atol=1e-4, err_msg=sid)


def test_ray_index_equals_local_index(
    local_ray: None, bundle: Bundle, tiny_manifest: Path, tiny_index: Path, tmp_path: Path
) -> None:
    """The whole tiny Tux Paint manifest through `xlsearch index --ray` == the local `xlsearch index` of it."""
    out = tmp_path / "ray-index"
    argv = ["--manifest", str(tiny_manifest), "--bundle", str(bundle.folder), "--out", str(out)]
    argv += [
        "--ray",
        "--actors",
        "1",
        "--threads",
        "1",
        "--workers",
        "1",
        "--chunk-size",
        "64",
        "--no-progress",
    ]
    assert index_main(argv) == 0
    got, want = ImageIndex.load(out, bundle), ImageIndex.load(tiny_index, bundle)
    ids = [it.id for it in manifest_source(tiny_manifest).items]
    assert got.count == want.count == len(ids) and got.caption_count == want.caption_count
    by_id = lambda index: sorted(index.metadata(index.int_ids()), key=lambda m: m.id)  # noqa: E731
    assert by_id(got) == by_id(want)
    assert_same_index(got, want, ids)
    assert got.report is not None and got.report["settings"]["ray"] is True
    assert not list(tmp_path.glob(".ray-index.work-*"))  # the checkpoint is cleared once the index is written


class Interrupted(Exception):
    pass


class StopAfter(Checkpoint):  # type: ignore[type-arg]
    """The job's checkpoint, interrupted (as a killed driver would be) right after its ``n``-th chunk file."""

    def __init__(self, base: Checkpoint, n: int):  # type: ignore[type-arg]
        super().__init__(base.folder, base.dims)
        self.n, self.writes = n, 0

    def write(self, rows: Sequence[tuple[str, str, Row]]) -> None:
        super().write(rows)
        self.writes += 1
        if self.writes == self.n:
            raise Interrupted(f"stopped after chunk {self.n}")


def test_interrupted_ray_job_resumes_from_its_checkpoints(
    local_ray: None, bundle: Bundle, tiny_manifest: Path, tiny_index: Path, tmp_path: Path
) -> None:
    from xlsearch_indexer.ray_job import RayOptions, run_ray_job

    items = manifest_source(tiny_manifest, ["test"]).items[:24]
    source = Source(items, "test")
    out = tmp_path / "index"
    opts = RayOptions(actors=1)

    def run(checkpoint: Checkpoint) -> object:  # type: ignore[type-arg]
        return run_ray_job(
            source,
            bundle.folder,
            checkpoint,
            IndexWriter(bundle, "IDMap,Flat", out),
            opts,
            batch_size=4,
            workers=1,
            chunk_size=8,
            progress=False,
        )

    base = checkpoint_for(out, BundleKey.of(bundle))
    with pytest.raises(Interrupted):
        run(StopAfter(base, 1))
    assert not out.exists()
    assert len(base.load()) == 8  # one chunk of 8 images survived the interruption

    result = run(base)
    assert (result.reused, result.computed, result.indexed) == (8, len(items) - 8, len(items))  # type: ignore[attr-defined]
    assert not base.folder.exists()
    assert_same_index(
        ImageIndex.load(out, bundle), ImageIndex.load(tiny_index, bundle), [it.id for it in items]
    )
