"""The durable live index: changes go to the change log (fsync'd) before they are applied and acknowledged; full
snapshots are written in the background once the log has grown past a threshold. The cost of one change is its own
record, whatever the size of the index.

Order of one change (``add`` / ``remove``), one change at a time (``writes``):

1. validate it against the index (and train an untrained IVF table), nothing logged yet: a bad change fails here;
2. append its record to ``changes.log`` and fsync: from here on it survives a kill -9;
3. apply it to the in-memory index under the write lock (searches wait only for this step);
4. return: the caller acknowledges. If the log is due, a background snapshot starts.

A snapshot (``snapshot``): freeze the index under the read lock (memory copies), write the folder without any lock,
then, holding back new changes for a moment, carry the log records newer than the snapshot into the new folder and
swap it in; the features store re-maps its new file under the write lock. A kill -9 at any point leaves either the
old folder with its full log or the new one with the newer records: loading replays the same changes.

``rw`` is the engine's readers-writer lock (``read()`` / ``write()`` context managers), ``writes`` the lock that
serialises changes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.index.changelog import ChangeLog, encode, remove_change
from xlsearch.index.image_index import ImageIndex, ImageMeta
from xlsearch.index.snapshot import folder_bytes, write_snapshot

log = logging.getLogger(__name__)

MiB = 1 << 20


class IndexStore:
    """Durable changes for one live ``ImageIndex`` in ``folder``. ``snapshot_min_bytes`` / ``snapshot_fraction``: a
    snapshot is due once the log holds more than max(min_bytes, fraction x snapshot size). ``background``: due
    snapshots run in a thread (False: in the call that made them due)."""

    def __init__(
        self,
        index: ImageIndex,
        folder: str | Path,
        rw: Any,
        writes: threading.Lock,
        *,
        snapshot_min_bytes: int = 64 * MiB,
        snapshot_fraction: float = 0.5,
        background: bool = True,
    ):
        self.index, self.folder, self.rw, self.writes = index, Path(folder).absolute(), rw, writes
        self.snapshot_min_bytes, self.snapshot_fraction = snapshot_min_bytes, snapshot_fraction
        self.background = background
        if index.folder is None or Path(index.folder).absolute() != self.folder:
            index.save(self.folder)  # a fresh or moved index: its first snapshot, so the log has a base
        self._log: ChangeLog | None = (
            None  # opened on the first change: serving alone never writes the folder
        )
        self._snapshot_bytes = folder_bytes(self.folder)
        self._snapshotting = threading.Lock()
        self._thread: threading.Thread | None = None
        self.logged_bytes = 0  # appended by this process (benchmarks)
        self.snapshots = 0
        self.last_error: BaseException | None = None

    # -- changes -------------------------------------------------------------------------------------------------
    def add(
        self,
        metas: Sequence[ImageMeta],
        images: np.ndarray,
        captions: Sequence[np.ndarray | None] | None,
        features: np.ndarray | None,
    ) -> int:
        """Log, then apply an add; returns the bytes logged. Raises ValueError (nothing changed) for a bad change,
        OSError (nothing changed) when the log cannot be written."""
        with self.writes:
            with self.rw.write():  # may train an IVF table; cheap otherwise
                change = self.index.check_add(metas, images, captions, features)
            written = self._append(encode(change))
            with self.rw.write():
                self.index.add(change.metas or [], change.images, change.captions, change.features)  # type: ignore[arg-type]
        self._maybe_snapshot()
        return written

    def remove(self, ids: Sequence[str], compact: bool = True) -> tuple[list[str], list[str]]:
        """Log, then apply a removal of the ids that exist -> (removed, not found)."""
        with self.writes:
            ids = list(dict.fromkeys(ids))
            present = [i for i in ids if self.index.int_id(i) is not None]
            missing = [i for i in ids if self.index.int_id(i) is None]
            if present:
                self._append(encode(remove_change(present)))
                with self.rw.write():
                    self.index.remove(present)
                    if compact and self.index.needs_compaction():
                        self.index.compact()
        if present:
            self._maybe_snapshot()
        return present, missing

    @property
    def log(self) -> ChangeLog:
        if self._log is None:
            self._log = ChangeLog(self.folder)  # cuts off a torn tail left by a kill during an append
        return self._log

    def _append(self, payload: bytes) -> int:
        n = self.log.append(self.index.version + 1, payload)
        self.logged_bytes += n
        return n

    # -- snapshots -----------------------------------------------------------------------------------------------
    @property
    def log_bytes(self) -> int:
        return self._log.size if self._log is not None else 0

    def snapshot_due(self) -> bool:
        limit = max(self.snapshot_min_bytes, self.snapshot_fraction * self._snapshot_bytes)
        return self.log_bytes > limit

    def _maybe_snapshot(self) -> None:
        if not self.snapshot_due() or self._snapshotting.locked():
            return
        if not self.background:
            self.snapshot()
            return
        self._thread = threading.Thread(target=self._snapshot_quietly, name="xlsearch-snapshot", daemon=True)
        self._thread.start()

    def _snapshot_quietly(self) -> None:
        try:
            self.snapshot()
        except Exception as e:  # noqa: BLE001 - the log still holds every change; retried when next due
            self.last_error = e
            log.exception("snapshot of %s failed (the change log keeps every change)", self.folder)

    def snapshot(self) -> bool:
        """Write a full snapshot now (no-op when the log holds nothing newer); False when one is running."""
        if not self._snapshotting.acquire(blocking=False):
            return False
        try:
            with self.rw.read():
                if self.index.version == self.index.snapshot_version:
                    return True
                frozen = self.index.freeze()
            held = [False]

            def carry_log(tmp: Path) -> None:
                self.writes.acquire()  # released after the swap: no change may slip between copy and swap
                held[0] = True
                self.log.copy_after(frozen.version, tmp)

            try:
                write_snapshot(self.folder, frozen, self.index.features, before_swap=carry_log)
                old, self._log = self._log, ChangeLog(self.folder)
                if old is not None:
                    old.close()
            finally:
                if held[0]:
                    self.writes.release()
            with self.rw.write():
                self.index.features.rebase(frozen.features, self.folder)
                self.index.snapshot_version = frozen.version
            self._snapshot_bytes = folder_bytes(self.folder)
            self.snapshots += 1
            log.info("snapshot of %s at version %d written", self.folder, frozen.version)
            return True
        finally:
            self._snapshotting.release()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for a background snapshot to finish (tests, shutdown)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self) -> None:
        self.wait()
        if self._log is not None:
            self._log.close()
