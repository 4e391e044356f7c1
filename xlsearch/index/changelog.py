"""The index's durable change log (``changes.log`` in the index folder): one checksummed record per change, appended
and fsync'd before the change is acknowledged, replayed after the last snapshot when the index loads.

File: the 8-byte magic ``XLCHLOG1``, then frames::

    u32 payload length | u32 crc32(seq + payload) | u64 seq | payload

``seq`` is the index version the change produces (every change bumps the version by one), so a snapshot at version
V replays exactly the records with seq > V, in order, and each must land on its seq. A payload is a JSON header
(the op, the metadata, the arrays' dtype and shape) followed by the raw little-endian arrays: no pickle.

A kill -9 during an append leaves at most one torn frame at the end (short, or failing its checksum): it was never
acknowledged, readers stop before it and the writer cuts it off when it opens the log. A bad frame followed by good
ones is not a torn write but damage, and loading refuses the folder.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.index.key import IndexFormatError
from xlsearch.index.metadata import ImageMeta

log = logging.getLogger(__name__)

LOG_NAME = "changes.log"
MAGIC = b"XLCHLOG1"
_FRAME = struct.Struct("<IIQ")  # payload length, crc32, seq
MAX_RECORD_BYTES = 1 << 31  # a length above this is a torn or damaged frame, never a record


@dataclass
class Change:
    """One logged change. ``op`` "add": ``metas`` + [n, dim] ``images`` + ``captions`` (a row per meta, None when
    the image has no caption) + optional ``features``; ``op`` "remove": string ``ids``."""

    op: str
    seq: int = 0
    metas: list[ImageMeta] | None = None
    images: np.ndarray | None = None
    captions: list[np.ndarray | None] | None = None
    features: np.ndarray | None = None
    ids: list[str] | None = None


def add_change(
    metas: Sequence[ImageMeta],
    images: np.ndarray,
    captions: Sequence[np.ndarray | None],
    features: np.ndarray | None,
) -> Change:
    return Change("add", metas=list(metas), images=images, captions=list(captions), features=features)


def checked_add(
    metas: Sequence[ImageMeta],
    image_vectors: np.ndarray,
    caption_vectors: np.ndarray | Sequence[np.ndarray | None] | None,
    features: np.ndarray | None,
    dim: int,
    cl_dim: int,
    feature_dim: int,
) -> Change:
    """An add change with float32 arrays of the right shapes, finite, one caption row (or None) per meta exactly
    where the meta has a caption; raises ValueError otherwise. ``features`` are dropped when ``feature_dim`` is 0."""
    n = len(metas)
    img = _vectors(image_vectors, n, dim, "image_vectors")
    feats = _vectors(features, n, feature_dim, "features") if features is not None and feature_dim else None
    if caption_vectors is None:
        caps: list[Any] = [None] * n
    elif isinstance(caption_vectors, np.ndarray):
        if caption_vectors.ndim != 2 or len(caption_vectors) != n:
            raise ValueError(f"caption_vectors: shape {caption_vectors.shape}, expected ({n}, dim)")
        caps = list(caption_vectors)
    else:
        caps = list(caption_vectors)
        if len(caps) != n:
            raise ValueError(f"caption_vectors: {len(caps)} rows for {n} images")
    for m, c in zip(metas, caps, strict=True):
        if m.has_caption != (c is not None):
            raise ValueError(f"{m.id}: a caption vector must be given iff the image has captions")
    rows = [
        None if c is None else _vectors(np.reshape(c, (1, -1)), 1, cl_dim, "caption_vectors")[0] for c in caps
    ]
    return add_change(metas, img, rows, feats)


def _vectors(x: Any, n: int, dim: int, what: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape != (n, dim):
        raise ValueError(f"{what}: shape {x.shape}, expected ({n}, {dim})")
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: non-finite values")
    return x


def remove_change(ids: Sequence[str]) -> Change:
    return Change("remove", ids=list(ids))


# -- payloads ---------------------------------------------------------------------------------------------------
def encode(change: Change) -> bytes:
    arrays: list[tuple[str, np.ndarray]] = []
    header: dict[str, Any] = {"op": change.op}
    if change.op == "add":
        assert change.metas is not None and change.images is not None and change.captions is not None
        header["metas"] = [[m.id, m.uri, list(m.captions), list(m.tags)] for m in change.metas]
        header["captioned"] = [c is not None for c in change.captions]
        arrays.append(("images", np.ascontiguousarray(change.images, "<f4")))
        rows = [c for c in change.captions if c is not None]
        if rows:
            arrays.append(("captions", np.ascontiguousarray(np.stack(rows), "<f4")))
        if change.features is not None:  # stored as float16 anyway (FeatureStore)
            arrays.append(("features", np.ascontiguousarray(change.features, "<f2")))
    elif change.op == "remove":
        header["ids"] = list(change.ids or [])
    else:
        raise ValueError(f"unknown change op {change.op!r}")
    header["arrays"] = [[name, a.dtype.str, list(a.shape)] for name, a in arrays]
    head = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return b"".join([struct.pack("<I", len(head)), head, *(a.tobytes() for _, a in arrays)])


def decode(seq: int, payload: bytes) -> Change:
    try:
        return _decode(seq, payload)
    except (
        struct.error,
        ValueError,
        KeyError,
        TypeError,
        IndexError,
    ) as e:  # checksummed, so not a torn write
        raise IndexFormatError(f"change log record {seq} cannot be read: {e}") from None


def _decode(seq: int, payload: bytes) -> Change:
    (n,) = struct.unpack_from("<I", payload)
    header = json.loads(payload[4 : 4 + n].decode("utf-8"))
    pos = 4 + n
    arrays: dict[str, np.ndarray] = {}
    for name, dtype, shape in header["arrays"]:
        dt = np.dtype(dtype)
        size = int(np.prod(shape)) * dt.itemsize
        arrays[name] = np.frombuffer(payload, dt, count=int(np.prod(shape)), offset=pos).reshape(shape)
        pos += size
    if pos != len(payload):
        raise IndexFormatError(f"change log record {seq}: {len(payload) - pos} bytes past its arrays")
    if header["op"] == "remove":
        return Change("remove", seq=seq, ids=list(header["ids"]))
    metas = [ImageMeta(i, u, tuple(c), tuple(t)) for i, u, c, t in header["metas"]]
    cap_rows = iter(arrays["captions"].astype(np.float32) if "captions" in arrays else ())
    captions = [next(cap_rows) if has else None for has in header["captioned"]]
    feats = arrays.get("features")
    return Change(
        "add",
        seq=seq,
        metas=metas,
        images=arrays["images"].astype(np.float32),
        captions=captions,
        features=None if feats is None else feats.astype(np.float32),
    )


# -- the file ---------------------------------------------------------------------------------------------------
def _crc(seq: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<Q", seq))) & 0xFFFFFFFF


def scan(path: Path) -> tuple[list[tuple[int, int, int]], int, int]:
    """(frames as (seq, payload offset, payload length), end of the last good frame, file size). Raises
    IndexFormatError for a file that is not a change log, or a bad frame followed by a good one."""
    size = path.stat().st_size
    frames: list[tuple[int, int, int]] = []
    with open(path, "rb") as fh:
        magic = fh.read(len(MAGIC))
        if len(magic) < len(MAGIC):
            return frames, 0, size  # killed while creating the file: nothing was ever acknowledged
        if magic != MAGIC:
            raise IndexFormatError(f"{path}: not an xlsearch change log")
        pos = len(MAGIC)
        while True:
            head = fh.read(_FRAME.size)
            if len(head) < _FRAME.size:
                break
            length, crc, seq = _FRAME.unpack(head)
            if length > MAX_RECORD_BYTES or pos + _FRAME.size + length > size:
                break
            payload = fh.read(length)
            if _crc(seq, payload) != crc:
                if _good_frame_after(fh, size, frames[-1][0] + 2 if frames else seq + 1):
                    raise IndexFormatError(
                        f"{path}: damaged record at byte {pos} (seq {seq}) followed by intact ones"
                    )
                break
            frames.append((seq, pos + _FRAME.size, length))
            pos += _FRAME.size + length
    return frames, pos, size


def _good_frame_after(fh: Any, size: int, next_seq: int) -> bool:
    """True when an intact frame of record ``next_seq`` starts after the current position (a torn tail has none)."""
    rest = fh.read(min(size, 256 << 20))
    needle = struct.pack("<Q", next_seq)
    at = rest.find(needle, 8)
    while at >= 0:
        start = at - 8  # seq is the frame header's third field
        length, crc, seq = _FRAME.unpack_from(rest, start)
        end = start + _FRAME.size + length
        if end <= len(rest) and _crc(seq, bytes(rest[start + _FRAME.size : end])) == crc:
            return True
        at = rest.find(needle, at + 1)
    return False


def read_changes(folder: Path, after: int) -> Iterator[Change]:
    """The logged changes with seq > ``after``, in order (read-only: a torn tail is skipped, not cut off)."""
    path = folder / LOG_NAME
    if not path.is_file():
        return
    frames, _, _ = scan(path)
    expected = after + 1
    with open(path, "rb") as fh:
        for seq, offset, length in frames:
            if seq <= after:
                continue
            if seq != expected:
                raise IndexFormatError(f"{path}: record {seq} where {expected} was expected (a lost change)")
            fh.seek(offset)
            yield decode(seq, fh.read(length))
            expected += 1


class ChangeLog:
    """The writer's handle: appends frames and fsyncs them; opening cuts off a torn tail (never acknowledged)."""

    def __init__(self, folder: Path):
        self.path = folder / LOG_NAME
        created = not self.path.exists()
        self._fh = open(self.path, "a+b")  # noqa: SIM115 - held open for appends
        try:
            frames, end, size = scan(self.path) if not created else ([], 0, 0)
            if end == 0:  # new, or killed before the magic was written
                self._fh.truncate(0)
                self._fh.write(MAGIC)
                end = len(MAGIC)
            elif end < size:
                log.warning("%s: cut off %d bytes of an unacknowledged (torn) record", self.path, size - end)
                self._fh.truncate(end)
            self._fh.flush()
            os.fsync(self._fh.fileno())
            if created:
                _fsync_dir(folder)
        except BaseException:
            self._fh.close()
            raise
        self.size = end
        self.records = len(frames)
        self.last_seq = frames[-1][0] if frames else None

    def append(self, seq: int, payload: bytes) -> int:
        """Write one record and fsync it; returns the bytes written. On failure the file is cut back to where
        it was (best effort) and the error propagates: the change must not be acknowledged."""
        frame = _FRAME.pack(len(payload), _crc(seq, payload), seq) + payload
        try:
            self._fh.seek(0, os.SEEK_END)
            self._fh.write(frame)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except BaseException:
            try:
                self._fh.truncate(self.size)
                self._fh.flush()
            except OSError:
                pass
            raise
        self.size += len(frame)
        self.records += 1
        self.last_seq = seq
        return len(frame)

    def copy_after(self, seq: int, dest_folder: Path) -> int:
        """Write the records with seq > ``seq`` into a new change log in ``dest_folder`` (a snapshot's folder, at
        the swap); returns how many."""
        self._fh.flush()
        frames, _, _ = scan(self.path)
        n = 0
        with open(self.path, "rb") as src, open(dest_folder / LOG_NAME, "wb") as out:
            out.write(MAGIC)
            for s, offset, length in frames:
                if s <= seq:
                    continue
                src.seek(offset - _FRAME.size)
                out.write(src.read(_FRAME.size + length))
                n += 1
            out.flush()
            os.fsync(out.fileno())
        return n

    def close(self) -> None:
        self._fh.close()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
