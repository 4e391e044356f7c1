"""Snapshots of an index folder: a consistent frozen copy of the in-memory index (``Frozen``, taken under the read
lock: the faiss tables serialised to memory, the metadata dict copied, the features' changes copied), written to a
temporary folder without any lock and swapped in atomically (``xlsearch.common.atomic.write_folder_atomic``).

``manifest.json`` is written last and records the ``version`` the snapshot holds: loading replays the change log
(``xlsearch.index.changelog``) from there. ``before_swap(tmp)`` runs just before the swap, for the store to carry the
change log's newer records into the new folder while it holds back new changes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.common.atomic import write_folder_atomic
from xlsearch.index.features import FeatureStore, FrozenFeatures
from xlsearch.index.key import BundleKey, IndexFormatError
from xlsearch.index.metadata import ImageMeta, write_metadata

INDEX_FORMAT = "xlsearch-index/1"
MANIFEST = "manifest.json"
METADATA = "metadata.sqlite"
REPORT = "report.json"


@dataclass
class Frozen:
    version: int
    manifest: dict[str, Any]
    files: dict[str, np.ndarray]  # file name -> bytes (serialised faiss tables, npy)
    metas: dict[int, ImageMeta]
    features: FrozenFeatures
    report: dict[str, Any] | None

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.files.values())


def write_snapshot(
    target: Path,
    frozen: Frozen,
    features: FeatureStore,
    before_swap: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``frozen`` as the index folder ``target`` (atomically). Returns the folder."""

    def fill(tmp: Path) -> None:
        for name, data in frozen.files.items():
            with open(tmp / name, "wb") as fh:
                fh.write(memoryview(data))
        features.write(frozen.features, tmp)
        write_metadata(tmp / METADATA, frozen.metas)
        if frozen.report is not None:
            (tmp / REPORT).write_text(json.dumps(frozen.report, ensure_ascii=False, indent=1) + "\n", "utf-8")
        manifest = json.dumps(frozen.manifest, ensure_ascii=False, indent=1)
        (tmp / MANIFEST).write_text(manifest + "\n", encoding="utf-8")  # last
        if before_swap is not None:
            before_swap(tmp)

    return write_folder_atomic(target, fill)


def folder_bytes(folder: Path) -> int:
    """Bytes of the snapshot files in an index folder (the change log excluded)."""
    from xlsearch.index.changelog import LOG_NAME

    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name != LOG_NAME)


def read_manifest(folder: Path) -> dict[str, Any]:
    try:
        m = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexFormatError(f"{folder}: no {MANIFEST} (not an index folder?)") from None
    except json.JSONDecodeError as e:
        raise IndexFormatError(f"{folder / MANIFEST}:{e.lineno}: broken JSON: {e.msg}") from None
    except OSError as e:
        raise IndexFormatError(f"{folder / MANIFEST}: unreadable: {e}") from None
    if not isinstance(m, dict) or m.get("format") != INDEX_FORMAT:
        got = m.get("format") if isinstance(m, dict) else type(m).__name__
        raise IndexFormatError(f"{folder}: format {got!r}, expected {INDEX_FORMAT!r}")
    return m


def index_key(m: Mapping[str, Any]) -> BundleKey:
    return BundleKey(
        m["bundle_hash"], int(m["dim"]), m["cl_space"], int(m["cl_dim"]), int(m.get("feature_dim", 0))
    )


def read_index_key(folder: str | os.PathLike[str]) -> BundleKey:
    """The bundle identity an index folder was built for, from its manifest alone (cheap: no vectors read)."""
    return index_key(read_manifest(Path(folder)))
