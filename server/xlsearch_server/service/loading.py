"""Loading one bundle + one index into a SearchEngine, and checking that the two belong together.

`check_pair` reads only the two `manifest.json` files, so `xlsearch serve` refuses a mismatched pair before it
binds a port; the full load (hash verification, ONNX sessions, FAISS) runs in the background afterwards.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlsearch.bundle.manifest import BundleError, read_bundle_manifest
from xlsearch.errors import Unavailable
from xlsearch.index.image_index import read_index_key
from xlsearch.index.key import BundleKey, IndexFormatError, IndexMismatchError, check_compatible
from xlsearch.search.protocol import Engine
from xlsearch.search.types import Limits
from xlsearch_server.settings import ServerSettings


class NotReady(Unavailable):
    """The bundle and index are still loading (or failed to load)."""


class PairError(ValueError):
    """The bundle or index folder is missing, unreadable, or the two do not match. The server exits."""


def check_pair(bundle: Path | None, index: Path | None) -> None:
    """Raise PairError unless ``index`` was built with ``bundle``: the one compatibility check
    (``xlsearch.index.key.check_compatible``) on the two manifests alone (no file hashing, no model loading)."""
    if bundle is None or index is None:
        raise PairError(
            "both a bundle (--bundle / XLSEARCH_BUNDLE) and an index (--index / XLSEARCH_INDEX) are needed"
        )
    try:
        bundle_key = BundleKey.of(read_bundle_manifest(bundle, verify=False))
        index_key = read_index_key(index)
    except (BundleError, IndexFormatError) as e:
        raise PairError(str(e)) from None
    try:
        check_compatible(index_key, bundle_key, Path(index))
    except IndexMismatchError as e:
        raise PairError(
            f"index {index} was built with bundle {index_key.bundle_hash[:12]}, but bundle {bundle} is "
            f"{bundle_key.bundle_hash[:12]}: rebuild the index with this bundle (`xlsearch index`) or serve the "
            f"bundle it was built with ({e})"
        ) from None


def check_served(settings: ServerSettings) -> None:
    """``check_pair`` for the configured backend: the index folder's manifest, or the Milvus collection's
    properties (one connection, no data read)."""
    if settings.index_backend == "faiss":
        check_pair(settings.bundle, settings.index)
        return
    if settings.bundle is None:
        raise PairError("a bundle (--bundle / XLSEARCH_BUNDLE) is needed")
    try:
        bundle_key = BundleKey.of(read_bundle_manifest(settings.bundle, verify=False))
        open_milvus(settings, bundle_key).close()
    except (BundleError, IndexFormatError) as e:
        raise PairError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - pymilvus' connection errors: the server exits with the reason
        raise PairError(f"milvus at {settings.milvus_uri}: {e}") from None


def open_milvus(settings: ServerSettings, bundle: object) -> Any:
    """The configured Milvus collection, checked against ``bundle``."""
    from xlsearch.index.milvus import MilvusIndex

    assert settings.milvus_uri is not None
    return MilvusIndex.open(
        settings.milvus_uri,
        settings.milvus_collection,
        bundle,
        token=settings.milvus_token,
        refresh_seconds=settings.milvus_refresh_seconds,
    )


def load_engine(settings: ServerSettings) -> Engine:
    """Bundle + index (the FAISS folder, or a Milvus collection) -> SearchEngine (blocking; seconds). Raises on a
    mismatched or broken pair."""
    import faiss

    from xlsearch.bundle.runtime import Bundle
    from xlsearch.encode.onnx import available_cpus
    from xlsearch.index.image_index import ImageIndex
    from xlsearch.search.engine import SearchEngine

    check_served(settings)
    # A single-query search gains nothing from OpenMP; its spinning threads only slow the encoders down.
    faiss.omp_set_num_threads(1)
    instances = settings.encoder_instances or available_cpus()
    bundle = Bundle(settings.bundle, intra_op_threads=settings.onnx_threads, sentence_instances=instances)
    store = None
    if settings.index_backend == "milvus":  # no index state here: Milvus owns it, add/delete write through
        from xlsearch.index.milvus_changes import MilvusChanges

        index = open_milvus(settings, bundle)
        store = MilvusChanges(index)
    else:
        index = ImageIndex.load(settings.index, bundle)  # the snapshot + the change log after it
    if settings.ef_search is not None:
        index.ef_search = settings.ef_search
    if settings.nprobe is not None:
        index.nprobe = settings.nprobe
    engine = SearchEngine(
        bundle,
        index,
        limits=Limits.from_settings(settings),
        min_tag_score=settings.min_tag_score,
        encode_slots=instances,
        max_query_batch=settings.query_batch_max,
        query_batch_window=settings.query_batch_window_ms / 1000.0,
        snapshot_min_bytes=int(settings.snapshot_min_mib * (1 << 20)),
        snapshot_fraction=settings.snapshot_fraction,
        store=store,
    )
    engine.warmup()  # lazy encoders load now, so health turns SERVING only when the first search is fast
    return engine


class LoadState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass
class EngineSlot:
    """The engine once loaded; `require()` is how every RPC gets it (UNAVAILABLE until then)."""

    state: LoadState = LoadState.LOADING
    engine: Engine | None = None
    error: str = ""

    def require(self) -> Engine:
        if self.state is LoadState.READY:
            assert self.engine is not None
            return self.engine
        if self.state is LoadState.FAILED:
            raise NotReady(f"the bundle/index failed to load: {self.error}")
        raise NotReady("the server is still loading its bundle and index; retry shortly")

    def ready(self, engine: Engine) -> None:
        self.engine, self.state = engine, LoadState.READY

    def failed(self, error: str) -> None:
        self.error, self.state = error, LoadState.FAILED
