"""Tokenisers and vocabularies shared by training and serving (torch-free).

Training and serving must tokenise identically, so everything that turns a caption or query into token ids
lives here: `ChineseTokenizer` (jieba), `EnglishTokenizer` (regex), `Vocab` and `encode_batch`.
Both tokenisers apply NFKC normalisation (full-width Latin/digits/punctuation -> ASCII) and lowercase.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Protocol

import numpy as np

PAD_TOKEN, UNK_TOKEN = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
_VOCAB_FORMAT = "xlsearch.vocab/1"

# jieba.Tokenizer() logs to the shared "jieba" logger; this lock guards the temporary level change.
_JIEBA_LOG_LOCK = threading.Lock()


def _normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def _is_junk(token: str) -> bool:
    """True for tokens made only of whitespace, punctuation (P*) or symbols (S*)."""
    return all(ch.isspace() or unicodedata.category(ch)[0] in "PS" for ch in token)


class Tokenizer(Protocol):
    lang: str

    def tokenize(self, text: str) -> list[str]: ...


class ChineseTokenizer:
    """jieba word segmentation on a private `jieba.Tokenizer` (the global one is never touched).

    The dictionary is loaded on first use (about 1 s; jieba caches it in the temp dir) with jieba's log output
    silenced. `user_dict` is a jieba user dictionary file ("word [freq] [tag]" per line).
    """

    lang = "zh"

    def __init__(self, user_dict: str | PathLike[str] | None = None) -> None:
        self.user_dict = Path(user_dict) if user_dict is not None else None
        self._tk: Any = None
        self._lock = threading.Lock()

    def _tokenizer(self) -> Any:
        if self._tk is None:
            with self._lock:
                if self._tk is None:
                    self._tk = self._load()
        return self._tk

    def _load(self) -> Any:
        import jieba

        tk = jieba.Tokenizer()
        with _JIEBA_LOG_LOCK:
            logger = logging.getLogger("jieba")
            old = logger.level
            logger.setLevel(logging.WARNING)
            try:
                tk.initialize()
                if self.user_dict is not None:
                    tk.load_userdict(str(self.user_dict))
            finally:
                logger.setLevel(old)
        return tk

    def tokenize(self, text: str) -> list[str]:
        words = self._tokenizer().lcut(_normalize(text))
        return [w for w in (w.strip() for w in words) if w and not _is_junk(w)]


# Words of letters/digits (any script), optionally joined by inner apostrophes: "don't", "o'clock", "dogs'" -> "dogs".
_EN_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


class EnglishTokenizer:
    """Lowercased regex words; punctuation (including hyphens) separates words, inner apostrophes are kept."""

    lang = "en"

    def tokenize(self, text: str) -> list[str]:
        return _EN_WORD.findall(_normalize(text).replace("\u2019", "'").replace("`", "'"))


def tokenizer_for(lang: str, user_dict: str | PathLike[str] | None = None) -> Tokenizer:
    """Tokenizer for "zh" or "en" (`user_dict` only applies to Chinese)."""
    if lang == "zh":
        return ChineseTokenizer(user_dict)
    if lang == "en":
        return EnglishTokenizer()
    raise ValueError(f"unsupported language {lang!r} (expected 'zh' or 'en')")


class Vocab:
    """Token <-> id map with reserved ids pad=0 and unk=1."""

    def __init__(self, tokens: Sequence[str]) -> None:
        tokens = list(tokens)
        if tokens[:2] != [PAD_TOKEN, UNK_TOKEN]:
            raise ValueError(f"vocab must start with {PAD_TOKEN!r}, {UNK_TOKEN!r}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("vocab has duplicate tokens")
        self.tokens = tokens
        # Reserved tokens are not in the index, so a literal "<pad>" in text encodes as unk, never as padding.
        self._index = {t: i for i, t in enumerate(tokens) if i > UNK_ID}

    @classmethod
    def build(
        cls, token_lists: Iterable[Sequence[str]], min_count: int = 1, max_size: int | None = None
    ) -> Vocab:
        """Tokens with count >= min_count, ordered by count desc then token; `max_size` includes pad and unk."""
        counts = Counter(t for tokens in token_lists for t in tokens)
        for reserved in (PAD_TOKEN, UNK_TOKEN):
            counts.pop(reserved, None)
        kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        if max_size is not None:
            if max_size < 2:
                raise ValueError("max_size must be >= 2 (pad and unk)")
            kept = kept[: max_size - 2]
        return cls([PAD_TOKEN, UNK_TOKEN, *kept])

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.tokens == other.tokens

    def id(self, token: str) -> int:
        return self._index.get(token, UNK_ID)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self._index.get(t, UNK_ID) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.tokens[i] for i in ids]

    def to_dict(self) -> dict[str, Any]:
        return {"format": _VOCAB_FORMAT, "tokens": self.tokens}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocab:
        if data.get("format") != _VOCAB_FORMAT:
            raise ValueError(f"not a vocabulary (format {data.get('format')!r}, expected {_VOCAB_FORMAT!r})")
        return cls(data["tokens"])

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | PathLike[str]) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | PathLike[str]) -> Vocab:
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except (ValueError, KeyError) as e:
            raise ValueError(f"{path}: {e}") from e


def encode_batch(
    token_lists: Sequence[Sequence[str]], vocab: Vocab, max_len: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Encode, truncate to `max_len` and right-pad with pad_id: (token_ids int64 [B,T], lengths int64 [B]).

    T is the longest (truncated) sentence in the batch. An empty sentence (no tokens, e.g. only punctuation)
    becomes a single unk token with length 1, so the encoder graph never sees length 0 and T >= 1.
    """
    if max_len is not None and max_len < 1:
        raise ValueError("max_len must be >= 1")
    rows = [vocab.encode(tokens)[:max_len] or [UNK_ID] for tokens in token_lists]
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    ids = np.full((len(rows), int(lengths.max(initial=1))), PAD_ID, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    return ids, lengths
