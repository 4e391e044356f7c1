"""Tag sets as label sequences (Liu et al. Sec. 3.1 and 4.1): the labels of an image ordered by their training
frequency — rare first (the paper's choice, which promotes small classes) or frequent first (Wang et al.'s CNN-RNN)
— then the end token. Label ids are the tag vocabulary's indices 0..C-1; the end token is C and the start token
(the first input, never a target) C+1, as ``xlsearch.bundle.sequence_tagger.greedy_labels`` expects."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from xlsearch.encode.tag_vocab import TagVocabulary

__all__ = ["end_token", "label_ranks", "label_sequences", "start_token"]


def end_token(n_labels: int) -> int:
    return n_labels


def start_token(n_labels: int) -> int:
    return n_labels + 1


def label_ranks(vocab: TagVocabulary, order: str) -> np.ndarray:
    """int [C]: each label's position in the sequence order. Rare first: by training-image count ascending;
    frequent first: descending; ties by the tag itself, so the order is fixed."""
    if order not in ("rare-first", "frequent-first"):
        raise ValueError(f"unknown label order {order!r}")
    sign = 1 if order == "rare-first" else -1
    ordered = sorted(range(len(vocab)), key=lambda j: (sign * vocab.entries[j].count, vocab.entries[j].tag))
    ranks = np.empty(len(vocab), dtype=np.int64)
    ranks[ordered] = np.arange(len(vocab))
    return ranks


def label_sequences(truth: np.ndarray, ranks: np.ndarray) -> list[list[int]]:
    """Per image (rows of a multi-hot [N, C]): its label ids in rank order, then the end token."""
    truth = np.asarray(truth) > 0
    end = end_token(truth.shape[1])
    return [sorted(np.flatnonzero(row).tolist(), key=lambda j: ranks[j]) + [end] for row in truth]


def pad_sequences(
    seqs: Sequence[Sequence[int]], start: int, pad_target: int = -100
) -> tuple[np.ndarray, np.ndarray]:
    """Teacher forcing: (inputs [N,T] = start, y1 .. y_{T-1}; targets [N,T] = y1 .. yT, padded with
    ``pad_target``). Input padding repeats ``start`` (its positions are never scored)."""
    width = max((len(s) for s in seqs), default=1)
    inputs = np.full((len(seqs), width), start, dtype=np.int64)
    targets = np.full((len(seqs), width), pad_target, dtype=np.int64)
    for row, seq in enumerate(seqs):
        inputs[row, 1 : len(seq)] = seq[:-1]
        targets[row, : len(seq)] = seq
    return inputs, targets


def trim(inputs, targets, pad_target: int):
    """A batch's (inputs, targets) cut to its longest sequence (the padded tail is never scored)."""
    width = int((targets != pad_target).sum(dim=1).max()) if len(targets) else 1
    return inputs[:, : max(width, 1)], targets[:, : max(width, 1)]
