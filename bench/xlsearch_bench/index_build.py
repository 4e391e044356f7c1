"""Building the scale benchmark's indexes: a factory template resolved for a size (``{nlist}``), the memory a
build is estimated to need (to skip what would not fit), the build itself (every row of a ``Collection`` into a
new ``ImageIndex``), the size of HNSW links, faiss' thread count around a call, and two what-ifs for proposed
``xlsearch/index/table.py`` changes: HNSW without the second exact vector store, IVF-PQ without polysemous
training."""

from __future__ import annotations

import contextlib
import time
import types
from collections.abc import Iterator
from typing import Any

import numpy as np

from xlsearch_bench.synthetic import Collection


def resolve_factory(factory: str, n: int, nlist_max: int) -> str:
    from xlsearch.index.factory import auto_nlist

    return factory.replace("{nlist}", str(min(auto_nlist(n), nlist_max)))


def estimate_bytes(n: int, dim: int, cl_dim: int, factory: str, shared_store: bool = False) -> int:
    """Rough resident size of an ImageIndex: vectors (twice for approximate factories), HNSW links, metadata."""
    from xlsearch.index.factory import parse_factory

    spec = parse_factory(factory)
    vec = n * (dim + cl_dim) * 4
    total = vec if spec.exact or (shared_store and spec.kind == "hnsw") else 2 * vec
    if spec.kind == "hnsw":
        total += 2 * n * (2 * spec.hnsw_m * 4 + 64)  # level-0 links (2M ints) + upper levels, both tables
    if spec.kind == "ivf" and spec.codec != "Flat":
        total = vec + 2 * n * 64  # the exact store + compressed codes (approximation)
    return total + n * 600  # ImageMeta objects + dicts


def build_index(
    bundle: Any,
    coll: Collection,
    factory: str,
    chunk: int,
    first: int,
    ef_construction: int | None,
    shared_store: bool = False,
) -> tuple[Any, float]:
    """Add every row of ``coll`` to a new ImageIndex; returns (index, seconds spent in ``index.add``).

    ``shared_store`` (HNSW only; a what-if for a proposed ``xlsearch/index/table.py`` change): the table keeps no
    second exact IDMap2/Flat copy; exact vectors are reconstructed from the HNSW index's own flat storage, which
    holds the same float32 vectors. Halves the vector memory; search results are identical."""
    import faiss

    from xlsearch.index.image_index import ImageIndex

    index = ImageIndex.create(bundle, factory)
    if ef_construction and index.spec.kind == "hnsw":
        for table in (index.images, index.captions):
            faiss.downcast_index(table.ann.index).hnsw.efConstruction = ef_construction
    if shared_store and index.spec.kind == "hnsw":
        for table in (index.images, index.captions):
            table.store = table.ann  # IDMap2(HNSWFlat): reconstruct_batch, ntotal and id_map work the same

            def add(self: Any, ids: np.ndarray, vecs: np.ndarray) -> None:
                if len(ids):
                    self.ann.add_with_ids(vecs, ids)

            table.add = types.MethodType(add, table)
    seconds = 0.0
    for _, metas, img, cap, has in coll.batches(chunk, first):
        caps = cap if has.all() else [c if h else None for c, h in zip(cap, has, strict=True)]
        t0 = time.perf_counter()
        index.add(metas, img, caps)
        seconds += time.perf_counter() - t0
        del metas, img, cap, caps
    return index, seconds


def hnsw_links_bytes(index: Any) -> int:
    import faiss

    total = 0
    for table in (index.images, index.captions):
        if table.ann is not None and index.spec.kind == "hnsw":
            total += faiss.downcast_index(table.ann.index).hnsw.neighbors.size() * 4
    return total


@contextlib.contextmanager
def faiss_threads(n: int | None) -> Iterator[None]:
    import faiss

    if not n:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def disable_polysemous_training() -> None:
    """What-if for the IVF-PQ build: ``faiss.index_factory("IVFn,PQm")`` turns on polysemous training (a slow
    simulated annealing over PQ codes, useful only for polysemous-filtered search, which the engine never uses).
    Wraps ``faiss.index_factory`` in this process to switch it off; ``xlsearch.index`` is otherwise unchanged."""
    import faiss

    original = faiss.index_factory
    if getattr(original, "_loadbench", False):
        return

    def index_factory(*args: Any, **kwargs: Any) -> Any:
        index = original(*args, **kwargs)
        with contextlib.suppress(RuntimeError):
            ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
            if hasattr(ivf, "do_polysemous_training"):
                ivf.do_polysemous_training = False
        return index

    index_factory._loadbench = True  # type: ignore[attr-defined]
    faiss.index_factory = index_factory
