"""BERT WordPiece tokenisation in pure Python (torch-free): the serving side of Chinese-CLIP's text tower.

`WordPieceTokenizer` reproduces, token for token, the tokeniser a BERT-family checkpoint was trained with (Google's
``FullTokenizer``, as shipped by ``cn_clip.clip.bert_tokenizer``): text cleaning (control characters dropped,
whitespace unified), a space around every CJK ideograph, lower-casing + accent stripping, punctuation split, then
greedy longest-match-first word pieces (``##`` continuation prefix, ``[UNK]`` for a word that cannot be pieced or
is longer than 200 characters). `encode` adds ``[CLS]`` / ``[SEP]``, truncates to ``context_length`` and pads with
``[PAD]`` (id 0) as ``cn_clip.clip.tokenize`` does, but only to the longest sentence of the batch: the exported
towers take any sequence length, and padding is masked.

tests/core/encode/test_subword.py checks it against cn_clip's own tokeniser on real Chinese text.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np

__all__ = ["WordPieceTokenizer", "load_wordpiece_vocab"]

_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def load_wordpiece_vocab(path: str | PathLike[str]) -> dict[str, int]:
    """One token a line (stripped); a token listed twice keeps its last line, as BERT's ``load_vocab``."""
    vocab: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for index, line in enumerate(f):
            vocab[line.strip()] = index
    return vocab


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch) in ("Cc", "Cf")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True  # every non-alphanumeric ASCII character counts, as in BERT
    return unicodedata.category(ch).startswith("P")


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


class WordPieceTokenizer:
    """BERT basic + WordPiece tokeniser over a ``vocab.txt``; `tokenize` gives the pieces of a text (no special
    tokens), `encode` a padded id batch with ``[CLS] ... [SEP]``."""

    def __init__(
        self,
        vocab: str | PathLike[str] | dict[str, int],
        lower_case: bool = True,
        context_length: int = 52,
        max_chars_per_word: int = 200,
    ) -> None:
        self.vocab = load_wordpiece_vocab(vocab) if isinstance(vocab, str | PathLike) else dict(vocab)
        self.lower_case = lower_case
        self.context_length = int(context_length)
        if self.context_length < 2:
            raise ValueError("context_length must leave room for [CLS] and [SEP]")
        self.max_chars_per_word = max_chars_per_word
        missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if t not in self.vocab]
        if missing:
            raise ValueError(f"WordPiece vocabulary lacks {missing}")
        self.pad_id = self.vocab["[PAD]"]
        self.unk_id = self.vocab["[UNK]"]
        self.cls_id = self.vocab["[CLS]"]
        self.sep_id = self.vocab["[SEP]"]

    @classmethod
    def from_file(cls, path: str | PathLike[str], **kwargs: object) -> WordPieceTokenizer:
        return cls(Path(path), **kwargs)  # type: ignore[arg-type]

    # -- BERT's BasicTokenizer -------------------------------------------------------------------------------------
    def _basic(self, text: str) -> list[str]:
        cleaned = []
        for ch in text:
            if ch == "\x00" or ch == "\ufffd" or _is_control(ch):
                continue
            if _is_whitespace(ch):
                cleaned.append(" ")
            elif _is_cjk(ch):
                cleaned.append(f" {ch} ")
            else:
                cleaned.append(ch)
        words = []
        for word in "".join(cleaned).split():
            if self.lower_case:
                word = word.lower()
                word = "".join(
                    c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn"
                )
            current: list[str] = []
            for ch in word:
                if _is_punctuation(ch):
                    if current:
                        words.append("".join(current))
                        current = []
                    words.append(ch)
                else:
                    current.append(ch)
            if current:
                words.append("".join(current))
        return " ".join(words).split()

    # -- WordPiece -------------------------------------------------------------------------------------------------
    def _pieces(self, word: str) -> list[str]:
        if len(word) > self.max_chars_per_word:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            end, piece = len(word), None
            while start < end:
                sub = word[start:end] if start == 0 else "##" + word[start:end]
                if sub in self.vocab:
                    piece = sub
                    break
                end -= 1
            if piece is None:
                return ["[UNK]"]
            pieces.append(piece)
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        """The word pieces of ``text`` (no ``[CLS]`` / ``[SEP]``)."""
        return [p for word in self._basic(text) for p in self._pieces(word)]

    def ids(self, pieces: Sequence[str]) -> list[int]:
        """``[CLS]`` + the pieces' ids (truncated to ``context_length - 2``) + ``[SEP]``."""
        body = [self.vocab.get(p, self.unk_id) for p in pieces][: self.context_length - 2]
        return [self.cls_id, *body, self.sep_id]

    def encode(self, texts: Sequence[str], pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(token_ids int64 [B,T], lengths int64 [B]); T is the longest row unless ``pad_to`` is given."""
        return self.encode_pieces([self.tokenize(t) for t in texts], pad_to)

    def encode_pieces(
        self, pieces: Sequence[Sequence[str]], pad_to: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        rows = [self.ids(p) for p in pieces]
        return pad_rows(rows, self.pad_id, pad_to)


def pad_rows(
    rows: Sequence[Sequence[int]], pad_id: int, pad_to: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded int64 [B,T] ids and [B] lengths (T = the longest row, or ``pad_to``)."""
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    width = int(pad_to if pad_to is not None else lengths.max(initial=1))
    if len(rows) and width < int(lengths.max()):
        raise ValueError(f"pad_to={width} is shorter than a row ({int(lengths.max())})")
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    return ids, lengths
