"""The indexer's caption stage: the CL vector of every *distinct* first caption, encoded once, in large batches, in
its own thread while the image pipeline decodes and encodes images (the two share no state; both libraries release
the GIL). Many collections repeat captions (239 of Tux Paint's 772 stamps share theirs with another stamp): images
with identical captions share one vector.

Resumable like the image rows: every ``chunk_size`` encoded captions are written to ``<work>/captions/`` keyed by
the text's hash, and a rerun encodes only the texts it lacks.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.common.timing import StageTimer
from xlsearch.encode.pipeline import Checkpoint, Row


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class CaptionStage:
    """``encode(texts) -> [n, cl_dim]`` over the distinct ``texts``; ``start()`` runs it in a thread, ``result()``
    waits and returns text -> vector (re-raising the thread's error)."""

    def __init__(
        self,
        texts: Sequence[str],
        encode: Callable[[list[str]], np.ndarray],
        folder: Path,
        cl_dim: int,
        *,
        batch_size: int = 128,
        chunk_size: int = 512,
        timer: StageTimer | None = None,
        on_progress: Callable[[int], Any] | None = None,
    ):
        self.texts = list(dict.fromkeys(texts))
        self.encode, self.batch_size, self.chunk_size = encode, batch_size, chunk_size
        self.checkpoint: Checkpoint[str] = Checkpoint(folder, {"caption": cl_dim})
        self.timer = timer or StageTimer()
        self.on_progress = on_progress
        self.vectors: dict[str, np.ndarray] = {}
        self.reused = 0
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> CaptionStage:
        self._thread = threading.Thread(target=self._run_guarded, name="index-captions", daemon=True)
        self._thread.start()
        return self

    def _run_guarded(self) -> None:
        try:
            self.run()
        except BaseException as e:  # noqa: BLE001 - re-raised by result() in the job's thread
            self._error = e

    def run(self) -> None:
        with self.timer("resume"):
            done = {k: r.vectors["caption"] for (k, _), r in self.checkpoint.load().items()}
        todo = []
        for t in self.texts:
            v = done.get(text_key(t))
            if v is None:
                todo.append(t)
            else:
                self.vectors[t] = v
        self.reused = len(self.texts) - len(todo)
        if self.on_progress and self.reused:
            self.on_progress(self.reused)
        pending: list[tuple[str, str, Row]] = []
        for start in range(0, len(todo), self.batch_size):
            part = todo[start : start + self.batch_size]
            with self.timer("encode_captions"):
                vecs = self.encode(part)
            for t, v in zip(part, vecs, strict=True):
                self.vectors[t] = v
                pending.append((text_key(t), "", Row({"caption": v})))
            if len(pending) >= self.chunk_size:
                self.checkpoint.write(pending)
                pending = []
            if self.on_progress:
                self.on_progress(len(part))
        self.checkpoint.write(pending)

    def result(self) -> dict[str, np.ndarray]:
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return self.vectors
