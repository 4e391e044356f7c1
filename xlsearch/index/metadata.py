"""What the index knows about an image besides its vectors (``ImageMeta``), its SQLite file, and the in-memory
bookkeeping (id maps, tag sets, uncaptioned images)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from xlsearch.index.key import IndexFormatError

METADATA_FORMAT = "xlsearch-index/1"


@dataclass(frozen=True)
class ImageMeta:
    """What the index knows about an image besides its vectors. ``captions[0]`` is the CL description."""

    id: str
    uri: str = ""
    captions: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "captions", tuple(self.captions))
        object.__setattr__(self, "tags", tuple(self.tags))
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"image id must be a non-empty string, got {self.id!r}")

    @property
    def caption(self) -> str:
        return self.captions[0] if self.captions else ""

    @property
    def has_caption(self) -> bool:
        return bool(self.captions)


_SCHEMA = """
CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images (int_id INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, uri TEXT NOT NULL, captions TEXT NOT NULL);
CREATE TABLE tags (int_id INTEGER NOT NULL REFERENCES images(int_id), pos INTEGER NOT NULL, tag TEXT NOT NULL,
                   PRIMARY KEY (int_id, pos));
CREATE INDEX tags_by_tag ON tags (tag, int_id);
"""


def write_metadata(path: Path, metas: Mapping[int, ImageMeta]) -> None:
    con = sqlite3.connect(path)
    try:
        con.executescript(_SCHEMA)
        con.execute("INSERT INTO info VALUES ('format', ?)", (METADATA_FORMAT,))
        con.executemany(
            "INSERT INTO images VALUES (?, ?, ?, ?)",
            ((i, m.id, m.uri, json.dumps(list(m.captions), ensure_ascii=False)) for i, m in metas.items()),
        )
        con.executemany(
            "INSERT INTO tags VALUES (?, ?, ?)",
            ((i, p, t) for i, m in metas.items() for p, t in enumerate(m.tags)),
        )
        con.commit()
    finally:
        con.close()


def read_metadata(path: Path) -> dict[int, ImageMeta]:
    if not path.is_file():
        raise IndexFormatError(f"{path}: missing")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tags: dict[int, list[str]] = {}
        for int_id, tag in con.execute("SELECT int_id, tag FROM tags ORDER BY int_id, pos"):
            tags.setdefault(int_id, []).append(tag)
        return {
            int_id: ImageMeta(sid, uri, tuple(json.loads(caps)), tuple(tags.get(int_id, ())))
            for int_id, sid, uri, caps in con.execute("SELECT int_id, id, uri, captions FROM images")
        }
    except sqlite3.DatabaseError as e:
        raise IndexFormatError(f"{path}: {e}") from None
    finally:
        con.close()


@dataclass
class MetadataState:
    """Bookkeeping kept in memory next to the faiss tables."""

    meta: dict[int, ImageMeta] = field(default_factory=dict)
    by_id: dict[str, int] = field(default_factory=dict)
    tags: dict[str, set[int]] = field(default_factory=dict)
    uncaptioned: set[int] = field(default_factory=set)

    def put(self, int_id: int, m: ImageMeta) -> None:
        self.meta[int_id], self.by_id[m.id] = m, int_id
        for t in m.tags:
            self.tags.setdefault(t, set()).add(int_id)
        if not m.has_caption:
            self.uncaptioned.add(int_id)

    def drop(self, int_id: int) -> ImageMeta:
        m = self.meta.pop(int_id)
        del self.by_id[m.id]
        for t in m.tags:
            members = self.tags[t]
            members.discard(int_id)
            if not members:
                del self.tags[t]
        self.uncaptioned.discard(int_id)
        return m
