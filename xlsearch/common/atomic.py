"""Atomic writes, the one implementation for files and folders: a crash leaves either the old version or the new
one, never half of one, and what a write returned is on disk (fsync'd, the directory entry too).

- files: ``write_text_atomic``, ``write_bytes_atomic``, ``save_npz_atomic`` (temp file in the same folder, fsync,
  rename, fsync the folder);
- folders: ``write_folder_atomic`` fills a temp folder next to the target, fsyncs every file, then swaps it in with
  two renames (old -> ``.<name>.old-*``, temp -> target). ``recover_folder`` puts the old version back after a
  crash between the two renames; ``remove_stale_temps`` deletes temp folders that a killed write left behind.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it; restored at once
    os.umask(mask)
    return mask


def _replace(tmp: str, path: Path, mode: int) -> None:
    os.chmod(tmp, mode & ~_umask())  # mkstemp's 0600 would hide bundles and indexes from another user
    os.replace(tmp, path)
    fsync_path(path.parent)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o666) -> Path:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _replace(tmp, path, mode)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """UTF-8 text, written atomically (the usual permissions under the umask)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def save_npz_atomic(path: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    """``np.savez(path, **arrays)``, written atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        _replace(tmp, path, 0o666)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- folders ----------------------------------------------------------------------------------------------------
@contextmanager
def _parent_lock(target: Path, blocking: bool = True) -> Iterator[bool]:
    """flock on the folder's parent directory, held by every folder write (so a reader can tell the temp folder
    of a live write from one left by a killed write). Yields False when ``blocking`` is off and a write holds it."""
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _swap_in(tmp: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    fsync_path(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_folder_atomic(target: str | os.PathLike[str], fill: Callable[[Path], None]) -> Path:
    """``fill(tmp)`` writes the folder's files into a temp folder next to ``target``, which then replaces
    ``target``. One write at a time per parent folder, across processes."""
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _parent_lock(target):
        recover_folder(target)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
        try:
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the folder from other users
            fill(tmp)
            for p in tmp.iterdir():
                fsync_path(p)
            _swap_in(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def recover_folder(target: Path) -> None:
    """After a crash between the two renames of a folder write the folder is missing but its previous version
    survives as ``.<name>.old-*``: put it back."""
    parent = target.parent
    if not parent.is_dir():
        return
    olds = sorted(parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not target.exists():
        os.rename(olds.pop(), target)
    for p in olds:
        shutil.rmtree(p, ignore_errors=True)


def remove_stale_temps(target: Path) -> None:
    """Temp folders of a write that was killed (kill -9, power loss) hold a full copy of the folder: remove them,
    logging what was removed, unless a write is running right now in some process."""
    parent = target.parent
    if not parent.is_dir() or not any(parent.glob(f".{target.name}.tmp-*")):
        return
    with _parent_lock(target, blocking=False) as free:
        if not free:
            return  # a live write owns them
        for p in sorted(parent.glob(f".{target.name}.tmp-*")):
            size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            shutil.rmtree(p, ignore_errors=True)
            log.warning("removed %s (%d bytes) left by an interrupted save", p, size)
