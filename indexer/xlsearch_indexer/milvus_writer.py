"""The indexer's writer for the Milvus backend (``xlsearch index --backend milvus``): the same mapped rows the
FAISS writer turns into a folder go into a new Milvus collection, which replaces the served one only once complete
(the alias moves; ``xlsearch.index.milvus``). ``--out`` is then a local folder for ``report.json`` (the work folder
of checkpoints sits beside it, as for the FAISS folder)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.common.atomic import write_text_atomic
from xlsearch.common.timing import StageTimer
from xlsearch.encode.pipeline import Row
from xlsearch.index.image_index import BundleKey, ImageMeta
from xlsearch.index.milvus_schema import INDEX_TYPES
from xlsearch_indexer.job import merge_tags
from xlsearch_indexer.sources import SourceItem

INSERT_BATCH = 1000


class MilvusWriter:
    """Writes the job's rows to Milvus at ``uri`` as collection (alias) ``collection``."""

    def __init__(
        self,
        bundle: Any,
        uri: str,
        collection: str,
        out: str | os.PathLike[str],
        index_type: str = "FLAT",
        ef_search: int | None = None,
        nprobe: int | None = None,
        token: str | None = None,
    ):
        if index_type not in INDEX_TYPES:
            raise ValueError(f"--milvus-index must be one of {', '.join(INDEX_TYPES)}, got {index_type!r}")
        if (ef_search is not None and ef_search < 1) or (nprobe is not None and nprobe < 1):
            raise ValueError("--ef-search and --nprobe must be >= 1")
        self.bundle, self.uri, self.collection, self.out = bundle, uri, collection, Path(out)
        self.index_type, self.ef_search, self.nprobe, self.token = index_type, ef_search, nprobe, token
        self.key = BundleKey.of(bundle)
        self.factory = f"milvus:{index_type}"

    def write(
        self,
        items: Sequence[SourceItem],
        rows: Sequence[Row],
        report: dict[str, Any],
        timer: StageTimer,
        roots: Sequence[str] = (),
    ) -> Path:
        from xlsearch.index.milvus import MilvusIndex

        with timer("index"):
            index = MilvusIndex.create(
                self.uri, self.collection, self.key, index_type=self.index_type, token=self.token, alias=False
            )
            kept = [(it, r) for it, r in zip(items, rows, strict=True) if not r.skipped]
            for start in range(0, len(kept), INSERT_BATCH):
                part = kept[start : start + INSERT_BATCH]
                metas = [
                    ImageMeta(it.id, it.uri, it.captions, merge_tags(it.tags, r.extra or ()))
                    for it, r in part
                ]
                feats = [r.vectors.get("feature") for _, r in part]
                index.add(
                    metas,
                    np.stack([r.vectors["image"] for _, r in part]),
                    [r.vectors["caption"] for _, r in part],
                    features=np.stack(feats) if all(f is not None for f in feats) else None,  # type: ignore[arg-type]
                )
            index.set_params(self.nprobe, self.ef_search, roots)
        with timer("save"):
            index.flush()
            index.publish()  # the alias moves to the complete collection; the one it named before is dropped
            report = {**report, "milvus": index.describe()}
            self.out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.out / "report.json", json.dumps(report, ensure_ascii=False, indent=1))
        index.close()
        return self.out
