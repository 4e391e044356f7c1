"""Building the scale benchmark's indexes: a factory template resolved for a size (``{nlist}``), the memory a
build is estimated to need (to skip what would not fit), the build itself (every row of a ``Collection`` into a
new ``ImageIndex``), the size of HNSW links, faiss' thread count around a call, and the what-if of IVF-PQ with
polysemous training switched off for an older checkout (``xlsearch/index/table.py`` now always does)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from xlsearch_bench.synthetic import Collection


def resolve_factory(factory: str, n: int, nlist_max: int) -> str:
    from xlsearch.index.factory import auto_nlist

    return factory.replace("{nlist}", str(min(auto_nlist(n), nlist_max)))


def estimate_bytes(n: int, dim: int, cl_dim: int, factory: str) -> int:
    """Rough resident size of an ImageIndex: vectors (one copy), HNSW links, metadata."""
    from xlsearch.index.factory import parse_factory

    spec = parse_factory(factory)
    vec = n * (dim + cl_dim) * 4
    total = vec
    if spec.kind == "hnsw":
        total += 2 * n * (2 * spec.hnsw_m * 4 + 64)  # level-0 links (2M ints) + upper levels, both tables
    if spec.kind == "ivf" and spec.codec != "Flat":
        total = vec // 2 + 2 * n * 64  # the float16 store + compressed codes (approximation)
    return total + n * 600  # ImageMeta objects + dicts


def build_index(
    bundle: Any,
    coll: Collection,
    factory: str,
    chunk: int,
    first: int,
    ef_construction: int | None,
) -> tuple[Any, float]:
    """Add every row of ``coll`` to a new ImageIndex; returns (index, seconds spent in ``index.add``)."""
    import faiss

    from xlsearch.index.image_index import ImageIndex

    index = ImageIndex.create(bundle, factory)
    if ef_construction and index.spec.kind == "hnsw":
        for table in (index.images, index.captions):
            faiss.downcast_index(table.index.index).hnsw.efConstruction = ef_construction
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
        if table.index is not None and index.spec.kind == "hnsw":
            total += faiss.downcast_index(table.index.index).hnsw.neighbors.size() * 4
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
