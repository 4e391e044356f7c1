"""Subword tokenisers of pretrained text towers (torch-free), one interface for the bundle runtime:

- ``wordpiece``: BERT WordPiece over a ``vocab.txt`` (Chinese-CLIP; ``xlsearch.encode.wordpiece``), pure Python.
- ``hf_tokenizers``: any Hugging Face ``tokenizer.json`` (SentencePiece/Unigram, BPE, WordPiece) through the
  ``tokenizers`` library (Rust, no torch): open_clip's multilingual towers (XLM-R), exported sentence encoders.

`tokenize(text)` gives the token strings the tower sees, special tokens included for ``hf_tokenizers``;
`encode_tokens(tokens)` turns them into right-padded ids (``[B,T]``, T = the longest row) and lengths. A spec in a
bundle manifest names the kind, the file (relative to the bundle) and the context length; `load_subword_tokenizer`
builds it. Files are resolved inside the bundle folder only.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from xlsearch.encode.wordpiece import WordPieceTokenizer, pad_rows

__all__ = ["SUBWORD_KINDS", "HFTokenizer", "SubwordTokenizer", "inside", "load_subword_tokenizer"]

SUBWORD_KINDS = ("wordpiece", "hf_tokenizers")
CLEANS = (
    "none",
    "whitespace",
)  # "whitespace": open_clip's HFTokenizer cleaning (ftfy, HTML entities, spaces)


def whitespace_clean(text: str) -> str:
    """open_clip's ``_clean_whitespace``: ftfy.fix_text, HTML entities unescaped twice, whitespace runs -> one space."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip()


class SubwordTokenizer(Protocol):
    pad_id: int
    context_length: int

    def tokenize(self, text: str) -> list[str]: ...

    def encode_tokens(self, tokens: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]: ...


class _WordPiece:
    """WordPiece behind the subword interface: tokens are the pieces; ids add [CLS]/[SEP]."""

    def __init__(self, tk: WordPieceTokenizer) -> None:
        self.tk = tk
        self.pad_id = tk.pad_id
        self.context_length = tk.context_length

    def tokenize(self, text: str) -> list[str]:
        return self.tk.tokenize(text)

    def encode_tokens(self, tokens: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        return self.tk.encode_pieces(tokens)


class HFTokenizer:
    """A ``tokenizer.json`` through the ``tokenizers`` library. Its post-processor adds the special tokens (e.g.
    ``<s> ... </s>``); ``clean="whitespace"`` applies open_clip's text cleaning first; ``context_length`` truncates the ids, keeping the last (end) token as Hugging Face's
    ``truncation=True`` does for a single sentence; padding uses ``pad_id`` (the tokenizer's pad token unless
    given)."""

    def __init__(
        self,
        path: str | Path,
        context_length: int = 512,
        pad_id: int | None = None,
        lower_case: bool = False,
        prefix: str = "",
        clean: str = "none",
    ) -> None:
        from tokenizers import Tokenizer

        self.tk = Tokenizer.from_file(str(path))
        self.tk.no_padding()
        self.tk.enable_truncation(int(context_length))
        self.context_length = int(context_length)
        self.lower_case = lower_case
        self.prefix = prefix
        if clean not in CLEANS:
            raise ValueError(f"clean must be one of {CLEANS}, got {clean!r}")
        self.clean = clean
        if pad_id is None:
            pad = next(
                (t for t in ("<pad>", "[PAD]", "<|endoftext|>") if self.tk.token_to_id(t) is not None), None
            )
            if pad is None:
                raise ValueError(f"{path}: no pad token; give pad_id")
            pad_id = int(self.tk.token_to_id(pad))
        self.pad_id = int(pad_id)
        self.unk_id = next(
            (int(i) for t in ("<unk>", "[UNK]") if (i := self.tk.token_to_id(t)) is not None), self.pad_id
        )

    def _text(self, text: str) -> str:
        if self.clean == "whitespace":
            text = whitespace_clean(text)
        text = self.prefix + text
        return text.lower() if self.lower_case else text

    def tokenize(self, text: str) -> list[str]:
        return list(self.tk.encode(self._text(text)).tokens)

    def encode_ids(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        rows = [e.ids for e in self.tk.encode_batch([self._text(t) for t in texts])]
        return pad_rows(rows, self.pad_id)

    def encode_tokens(self, tokens: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        ids = []
        for row in tokens:
            ids.append([i if (i := self.tk.token_to_id(t)) is not None else self.unk_id for t in row])
        return pad_rows(ids, self.pad_id)


def inside(folder: str | Path, name: str) -> Path:
    """``folder / name``, refused when ``name`` leaves the folder (absolute, ``..``, symlink out)."""
    root = Path(folder).resolve()
    path = (root / name).resolve()
    if path != root and root not in path.parents:
        raise ValueError(f"{name!r} is outside {root}")
    return path


def load_subword_tokenizer(spec: dict[str, Any], folder: str | Path) -> SubwordTokenizer:
    """Tokenizer from a manifest spec, e.g. ``{"kind": "wordpiece", "file": "vocab_zh.txt", "lower_case": true,
    "context_length": 52}`` or ``{"kind": "hf_tokenizers", "file": "tokenizer.json", "context_length": 77}``."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    path = inside(folder, str(spec.pop("file")))
    if kind == "wordpiece":
        return _WordPiece(WordPieceTokenizer(path, **spec))
    if kind == "hf_tokenizers":
        return HFTokenizer(path, **spec)
    raise ValueError(f"unknown subword tokenizer kind {kind!r} (expected one of {SUBWORD_KINDS})")
