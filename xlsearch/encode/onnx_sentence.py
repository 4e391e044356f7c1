"""Any exported transformer as the sentence encoder (torch-free): ONNX + ``tokenizer.json`` kept in the bundle.

Spec (in the bundle manifest's ``sentence_encoder``; paths relative to the bundle folder, never outside it)::

    {"kind": "onnx", "name": "intfloat/multilingual-e5-base", "dim": 768,
     "model": "sentence_encoder/model.onnx", "tokenizer": "sentence_encoder/tokenizer.json",
     "pooling": "mean", "normalize": true, "max_length": 512,
     "prefixes": {"query": "query: ", "passage": "passage: "},
     "inputs": {"ids": "input_ids", "mask": "attention_mask", "type_ids": "token_type_ids"},
     "output": "last_hidden_state", "info": {...}}

The graph takes int64 ``input_ids`` / ``attention_mask`` (and ``token_type_ids`` when it declares it) of any batch
and sequence length and returns token states ``[B,T,H]`` (pooled here: ``mean`` over the mask or ``cls``, the first
token) or an already pooled ``[B,H]``. ``xlsearch_training.pretrained.sentence_export`` writes such a folder from a
Hugging Face model. Calls share one ONNX Runtime session (thread-safe); texts are encoded in batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.encode.onnx import make_session
from xlsearch.encode.subword import HFTokenizer, inside

__all__ = ["POOLINGS", "OnnxSentenceEncoder"]

POOLINGS = ("mean", "cls")
_DEFAULT_INPUTS = {"ids": "input_ids", "mask": "attention_mask", "type_ids": "token_type_ids"}


class OnnxSentenceEncoder:
    """Sentences -> [N, dim] float32 with an exported transformer; see the module docstring for the spec."""

    def __init__(
        self,
        root: str | Path,
        model: str,
        tokenizer: str,
        name: str = "onnx",
        pooling: str = "mean",
        normalize: bool = True,
        max_length: int = 512,
        prefixes: dict[str, str] | None = None,
        inputs: dict[str, str] | None = None,
        output: str | None = None,
        batch_size: int = 32,
        num_threads: int | None = None,
        lower_case: bool = False,
        info: dict[str, Any] | None = None,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.name = name
        self.info = dict(info or {})  # informational (how it was exported, its parity check)
        self.pooling = pooling
        self.normalize = normalize
        self.prefixes = {"query": "", "passage": "", **(prefixes or {})}
        self.batch_size = batch_size
        self.tokenizer = HFTokenizer(
            inside(root, tokenizer), context_length=max_length, lower_case=lower_case
        )
        self.session = make_session(inside(root, model), num_threads)
        self.inputs = {**_DEFAULT_INPUTS, **(inputs or {})}
        declared = {i.name for i in self.session.get_inputs()}
        for role in ("ids", "mask"):
            if self.inputs[role] not in declared:
                raise ValueError(f"{model}: no input {self.inputs[role]!r} (it has {sorted(declared)})")
        self._type_ids = self.inputs["type_ids"] in declared
        outputs = [o.name for o in self.session.get_outputs()]
        self.output = output or outputs[0]
        if self.output not in outputs:
            raise ValueError(f"{model}: no output {self.output!r} (it has {outputs})")
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self.encode(["dim"]).shape[1])
        return self._dim

    def encode(self, texts: Sequence[str], role: str = "query") -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of texts, not a single string")
        if role not in ("query", "passage"):
            raise ValueError(f"role must be 'query' or 'passage', got {role!r}")
        texts = [self.prefixes[role] + t for t in texts]
        chunks = [self._encode(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        if not chunks:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)

    def _encode(self, texts: list[str]) -> np.ndarray:
        ids, lengths = self.tokenizer.encode_ids(texts)
        mask = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
        feeds = {self.inputs["ids"]: ids, self.inputs["mask"]: mask}
        if self._type_ids:
            feeds[self.inputs["type_ids"]] = np.zeros_like(ids)
        (out,) = self.session.run([self.output], feeds)
        out = out.astype(np.float32)
        if out.ndim == 3:
            if self.pooling == "cls":
                out = out[:, 0]
            else:
                m = mask[:, :, None].astype(np.float32)
                out = (out * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        if self.normalize:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out
