"""The captioner's vocabulary: segmented sentences -> token ids with <bos>/<eos> (ids 2 and 3 after pad and unk)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from xlsearch.bundle.captioner import BOS_TOKEN, EOS_TOKEN
from xlsearch.encode.text import PAD_TOKEN, UNK_TOKEN, Vocab, tokenizer_for

BOS_ID, EOS_ID = 2, 3


def build_caption_vocab(token_lists: Iterable[Sequence[str]], min_count: int = 1) -> Vocab:
    """<pad>, <unk>, <bos>, <eos>, then every token seen at least ``min_count`` times (by count, then token)."""
    counts = Counter(t for tokens in token_lists for t in tokens)
    for reserved in (PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN):
        counts.pop(reserved, None)
    words = sorted((t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t))
    return Vocab([PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, *words])


def segment_all(sentences: Iterable[str], lang: str) -> list[list[str]]:
    """jieba (zh) / regex (en) tokens of each sentence, punctuation dropped (the tokenizers of xlsearch.encode.text)."""
    tokenizer = tokenizer_for(lang)
    return [tokenizer.tokenize(s) for s in sentences]


def encode_caption(tokens: Sequence[str], vocab: Vocab, max_len: int) -> list[int]:
    """<bos> w1 .. wn <eos> with at most ``max_len`` words."""
    return [BOS_ID, *vocab.encode(tokens[:max_len]), EOS_ID]
