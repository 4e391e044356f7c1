"""Incremental persistence: the change log's format, and kill -9 of a real process at every step of a change
(during an append, a snapshot, the folder swap, the log carry-over, a replay, and at random moments under a
stream of adds, deletes and background snapshots). After every kill the folder loads, holds every acknowledged
change, and each image in it is exactly what was added (no half-applied change)."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from xlsearch.index.changelog import LOG_NAME, MAGIC, ChangeLog, encode, read_changes, remove_change, scan
from xlsearch.index.image_index import ImageIndex, IndexFormatError

sys.path.insert(0, str(Path(__file__).parent))
from crash_child import CL_DIM, KEY, meta, vectors  # noqa: E402

CHILD = Path(__file__).with_name("crash_child.py")


class Child:
    """``crash_child.py`` in a subprocess; ``acked`` collects what it acknowledged."""

    def __init__(self, folder: Path, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(folder), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.added: set[int] = set()
        self.deleted: set[int] = set()
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())
            parts = line.split()
            if parts[:2] == ["ack", "add"]:
                self.added.add(int(parts[2]))
                self.deleted.discard(int(parts[2]))
            elif parts[:2] == ["ack", "del"]:
                self.deleted.add(int(parts[2]))

    def wait_for(self, predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None and not self._reader.is_alive():
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"child exited {self.proc.returncode}: {self.lines[-5:]} {err[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"child did not get there: {self.lines[-5:]}")
            time.sleep(0.01)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=30)

    def run_to_end(self, timeout: float = 120.0) -> None:
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        assert self.proc.returncode == 0, self.proc.stderr.read() if self.proc.stderr else ""


def in_flight_delete(child: Child) -> set[int]:
    """The delete ``child`` may have logged but not yet acknowledged when it was killed (it follows the add of
    every n with n % 5 == 4, so only when that add was the child's last acknowledgement): durable without an
    acknowledgement, so it may or may not have happened. Per child: an earlier child's in-flight delete is not
    the last add of the ids acknowledged so far (``settle`` records how it turned out)."""
    last = max(child.added, default=-1)
    return {last - 3} if last % 5 == 4 and last >= 3 else set()


def present_ids(ix: ImageIndex) -> set[int]:
    return {int(ix.metadata([i])[0].id.split("-")[1]) for i in ix.int_ids()}


def settle(ix: ImageIndex, maybe_deleted: set[int], deleted: set[int]) -> set[int]:
    """After a check: an in-flight delete that reached the log is as good as acknowledged from now on (later
    loads must not bring the image back), one that did not leaves the image live (later loads must keep it)."""
    return deleted | (maybe_deleted - present_ids(ix))


def check_folder(
    folder: Path, added: set[int], deleted: set[int], maybe_deleted: set[int] | frozenset[int] = frozenset()
) -> ImageIndex:
    """Every acknowledged add (not deleted since) is there and every acknowledged delete is gone (an id in
    ``maybe_deleted`` may be either); every image in the index has exactly its own vectors, caption and
    feature."""
    ix = ImageIndex.load(folder, KEY)
    present = present_ids(ix)
    lost = added - deleted - present - maybe_deleted
    assert not lost, f"lost acknowledged adds: {sorted(lost)[:10]}"
    assert not deleted & present, f"acknowledged deletes still present: {sorted(deleted & present)[:10]}"
    for n in present:
        i = np.array([ix.int_id(f"img-{n}")])
        img, cap, feat = vectors(n)
        np.testing.assert_array_equal(ix.image_vectors(i)[0], img)
        assert ix.metadata(i)[0] == meta(n)
        if meta(n).has_caption:
            np.testing.assert_array_equal(ix.caption_vectors(i)[0], cap)
        np.testing.assert_allclose(ix.image_features(i)[0], feat, atol=2e-3)
    assert ix.count == len(present) and ix.caption_count == sum(meta(n).has_caption for n in present)
    return ix


# -- the format -----------------------------------------------------------------------------------------------
def test_torn_tail_is_skipped_by_readers_and_cut_by_the_writer(tmp_path: Path) -> None:
    log = ChangeLog(tmp_path)
    for seq in (1, 2, 3):
        log.append(seq, f"payload {seq}".encode() * 10)
    log.close()
    path = tmp_path / LOG_NAME
    good = path.stat().st_size
    with open(path, "ab") as fh:  # half of record 4
        fh.write(b"\x40\x00\x00\x00\x12\x34\x56\x78\x04\x00\x00\x00\x00\x00\x00\x00partial")
    frames, end, size = scan(path)
    assert [f[0] for f in frames] == [1, 2, 3] and end == good and size > good
    log = ChangeLog(tmp_path)  # the writer cuts the unacknowledged tail off before appending
    assert path.stat().st_size == good and log.last_seq == 3
    log.append(4, b"four")
    log.close()
    assert [f[0] for f in scan(path)[0]] == [1, 2, 3, 4]


def test_damage_before_intact_records_is_refused(tmp_path: Path) -> None:
    log = ChangeLog(tmp_path)
    for seq in (1, 2, 3):
        log.append(seq, bytes([seq]) * 100)
    log.close()
    path = tmp_path / LOG_NAME
    data = bytearray(path.read_bytes())
    data[len(MAGIC) + 16 + 50] ^= 0xFF  # a flipped bit inside record 1, records 2 and 3 intact after it
    path.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="damaged record"):
        scan(path)


def test_a_gap_in_the_sequence_is_refused(tmp_path: Path) -> None:
    log = ChangeLog(tmp_path)
    log.append(1, encode(remove_change(["a"])))
    log.append(3, encode(remove_change(["b"])))  # record 2 lost
    log.close()
    with pytest.raises(IndexFormatError, match="lost change"):
        list(read_changes(tmp_path, 0))


def test_one_add_costs_one_record_whatever_the_index_size(tmp_path: Path) -> None:
    """Bytes written by one add (and no snapshot): the record alone, the same at 10 and at 5,000 images."""
    from xlsearch.index.store import IndexStore
    from xlsearch.search.locks import RWLock

    written = []
    for size in (10, 5000):
        ix = ImageIndex.create(KEY)
        for start in range(0, size, 1000):
            part = range(start, min(size, start + 1000))
            vs = [vectors(n) for n in part]
            ix.add(
                [meta(n) for n in part],
                np.stack([v[0] for v in vs]),
                [v[1] if meta(n).has_caption else None for n, v in zip(part, vs, strict=True)],
                np.stack([v[2] for v in vs]),
            )
        folder = tmp_path / f"ix{size}"
        store = IndexStore(ix, folder, RWLock(), threading.Lock(), snapshot_min_bytes=1 << 30)
        before = sum(p.stat().st_size for p in folder.iterdir())
        img, cap, feat = vectors(10**6)
        store.add([meta(10**6)], img[None], [cap], feat[None])
        written.append(sum(p.stat().st_size for p in folder.iterdir()) - before)
        store.close()
        assert ImageIndex.load(folder, KEY).count == size + 1
    assert written[0] == written[1] < 1024 + len(MAGIC), written


# -- kill -9 at each step ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fault", "after"),
    [("append", 7), ("snapshot", 0), ("swap", 0), ("carry", 0)],
)
def test_kill_inside_a_step_loses_nothing_acknowledged(tmp_path: Path, fault: str, after: int) -> None:
    folder = tmp_path / "index"
    Child(folder, "--count", "5").run_to_end()  # a base with a snapshot and a log
    first = check_folder(folder, set(range(5)), {1})
    assert first.count == 4
    child = Child(folder, "--start", "5", "--fault", fault, "--after", str(after), "--snapshot-bytes", "1200")
    child.wait_for(lambda: any(line.startswith("at-fault") for line in child.lines))
    child.kill()
    assert list(folder.parent.glob(".index.tmp-*")) or fault != "snapshot"  # the half-written snapshot
    added, deleted = set(range(5)) | child.added, {1} | child.deleted
    maybe = in_flight_delete(child)
    deleted = settle(check_folder(folder, added, deleted, maybe), maybe, deleted)
    assert not list(folder.parent.glob(".index.*")), "load cleaned up the killed write"
    # and the folder takes new changes where it stopped (a torn record is cut off first)
    more = Child(folder, "--start", "100", "--count", "6")
    more.run_to_end()
    check_folder(folder, added | more.added, deleted | more.deleted)


def test_kill_during_replay_changes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "index"
    base = Child(folder, "--count", "30", "--snapshot-bytes", str(1 << 30))  # every change stays in the log
    base.run_to_end()
    log_before = (folder / LOG_NAME).read_bytes()
    child = Child(folder, "--fault", "replay", "--after", "10")
    child.wait_for(lambda: any(line.startswith("at-fault") for line in child.lines))
    child.kill()
    assert (folder / LOG_NAME).read_bytes() == log_before
    ix = check_folder(folder, base.added, base.deleted)
    assert ix.snapshot_version < ix.version  # the 30 adds came from the log


def test_random_kills_under_adds_deletes_and_background_snapshots(tmp_path: Path) -> None:
    """Six rounds: a writer streams adds and deletes (snapshots every ~10 changes, in the background) and is
    killed at a random moment; the folder must hold everything acknowledged so far after every kill."""
    folder = tmp_path / "index"
    rng = random.Random(14)
    added: set[int] = set()
    deleted: set[int] = set()
    start = 0
    for _ in range(6):
        child = Child(folder, "--start", str(start), "--snapshot-bytes", "3000")
        child.wait_for(lambda c=child: len(c.added) >= 3)
        time.sleep(rng.uniform(0.0, 0.4))
        child.kill()
        added |= child.added
        deleted = (deleted - child.added) | child.deleted
        maybe = in_flight_delete(child)
        deleted = settle(check_folder(folder, added, deleted, maybe), maybe, deleted)
        start = max(added) + 1000  # new ids each round (an unacknowledged add may exist)
    assert len(added) >= 18


def test_a_logged_but_unacknowledged_delete_stays_done_in_later_rounds(tmp_path: Path) -> None:
    """The random-kill test's old flake, made deterministic: a kill after a delete reached the log but before it
    was acknowledged. The delete is durable (replayed), a later writer continues the log after it, and the next
    rounds' checks hold it as done (they once forgot it and reported the image as a lost add)."""
    folder = tmp_path / "index"
    child = Child(
        folder, "--fault", "unacked-delete", "--after", "2"
    )  # hangs after the 2nd delete (of img-6)
    child.wait_for(lambda: any(line.startswith("at-fault") for line in child.lines))
    child.kill()
    assert max(child.added) == 9 and child.deleted == {1}
    maybe = in_flight_delete(child)
    assert maybe == {6}
    ix = check_folder(folder, child.added, child.deleted, maybe)
    assert 6 not in present_ids(ix)  # logged, so replayed although never acknowledged
    deleted = settle(ix, maybe, child.deleted)
    more = Child(folder, "--start", "1000", "--count", "10", "--snapshot-bytes", "1500")
    more.run_to_end()
    ix = check_folder(folder, child.added | more.added, deleted | more.deleted)  # strict: no maybe any more
    assert 6 not in present_ids(ix) and ix.version == 10 + 2 + 10 + 2


@pytest.mark.parametrize("factory", ["HNSW16", "IVFauto,Flat"])
def test_replay_of_approximate_factories(tmp_path: Path, factory: str) -> None:
    """One image at a time (IVFauto trains on the first), snapshots every few changes: the vectors read back from
    the approximate index itself (one copy) are exact after snapshot + replay."""
    folder = tmp_path / "index"
    child = Child(folder, "--count", "40", "--factory", factory, "--snapshot-bytes", "2500")
    child.run_to_end()
    ix = check_folder(folder, child.added, child.deleted)
    assert ix.factory == ImageIndex.create(KEY, factory).factory and CL_DIM == ix.cl_dim
