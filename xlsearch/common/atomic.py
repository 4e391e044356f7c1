"""Atomic file writes for resumable jobs: a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text through a temporary file in the same folder, fsynced, then renamed into place. The file gets
    the usual 0644 permissions (mkstemp's 0600 would hide bundles and manifests from a server running as another
    user)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_npz_atomic(path: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    """`np.savez(path, **arrays)` through a temporary file in the same folder, fsynced, then renamed into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
