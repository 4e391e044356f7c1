"""Serving side of the S-CNN-RNN tagger (Liu et al., Semantic Regularisation, Sec. 3-4), torch-free: Chinese tags
emitted one at a time by an LSTM until its end token, so the number of tags is predicted implicitly.

The component (written by ``xlsearch_training.srnn``) holds two ONNX graphs and the tag vocabularies:

- ``concepts.onnx``: ``feature`` [B,F] (+ ``user_tags`` [B,Cz] multi-hot) -> ``scores`` [B,Cz] (the concept layer
  s^: one sigmoid unit per tag; absent in the ablation whose interface is a feature layer), ``h``, ``c`` [B,H]: the
  LSTM's initial state ``h0 = W s^ + b``, ``c0 = 0``.
- ``label_step.onnx``: ``token`` [B] int64, ``h``, ``c`` -> ``log_probs`` [B,Cz+1] (the tags, then the end token),
  ``h_out``, ``c_out``: one step.

Decoding is greedy (the paper's choice for multi-label classification), shared with training (the PyTorch model
decodes through ``greedy_labels`` with a torch step, so the export is checked to give the same tag sequences). A tag
already emitted is never emitted again, and the first step cannot end (an image gets at least one tag, as with the
label-quantity predictor). With ``k`` the end token is never chosen: exactly k tags. Each tag's score is its
concept probability s^_j (the step's probability of the tag in the ablation); tags are returned best first.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.bundle.tagger import TaggerError, TagInputError, TagInputs, TagScore
from xlsearch.encode.onnx import make_session
from xlsearch.encode.tag_vocab import TagVocabulary

__all__ = ["SEQUENCE_TAGGER_FORMAT", "SequenceTagger", "greedy_labels"]

SEQUENCE_TAGGER_FORMAT = "xlsearch.sequence-tagger/1"
# (tokens [N], h [N,H], c [N,H]) -> (log_probs [N,L+1], h [N,H], c [N,H])
StepFn = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def greedy_labels(
    h: np.ndarray,
    c: np.ndarray,
    step: StepFn,
    *,
    n_labels: int,
    max_labels: int,
    k: int | None = None,
) -> list[list[tuple[int, float]]]:
    """Greedy label sequences from the initial states [B,H]: per image [(label, step probability), ...] in the
    order emitted. Label ids are 0..n_labels-1, the end token is ``n_labels`` and the start token ``n_labels + 1``.
    Without ``k``: stops at the end token (never at the first step) or after ``max_labels``; with ``k``: exactly
    ``min(k, n_labels)`` labels."""
    end, start = n_labels, n_labels + 1
    batch = len(h)
    out: list[list[tuple[int, float]]] = [[] for _ in range(batch)]
    limit = min(int(k) if k is not None else int(max_labels), n_labels)
    emitted = np.zeros((batch, n_labels + 1), dtype=bool)  # the end column is never set
    alive = np.arange(batch)
    tokens = np.full(batch, start, dtype=np.int64)
    for t in range(limit):
        if not len(alive):
            break
        logp, h_new, c_new = step(tokens, h, c)
        logp = np.array(logp, dtype=np.float64)
        logp[emitted[alive]] = -np.inf
        if k is not None or t == 0:
            logp[:, end] = -np.inf
        choice = np.argmax(logp, axis=1)
        keep = [row for row, j in enumerate(choice) if j != end]
        for row in keep:
            b, j = int(alive[row]), int(choice[row])
            out[b].append((j, float(np.exp(logp[row, j]))))
            emitted[b, j] = True
        alive, tokens = alive[keep], choice[keep].astype(np.int64)
        h, c = h_new[keep], c_new[keep]
    return out


class SequenceTagger(TagInputs):
    """A loaded S-CNN-RNN tagger component, with the interface of ``xlsearch.bundle.tagger.Tagger`` that the
    service, the engine and the indexer use (vocabulary, user tags, ``predict``)."""

    def __init__(
        self,
        init_session: Any,
        step_session: Any,
        spec: dict[str, Any],
        zh_vocab: TagVocabulary,
        en_vocab: TagVocabulary,
    ) -> None:
        super().__init__(spec, zh_vocab, en_vocab)
        self._init, self._step = init_session, step_session
        self._scores_output = spec["outputs"].get("scores")
        self.max_labels = int(spec.get("max_labels", len(zh_vocab)))
        if int(spec.get("labels", len(zh_vocab))) != len(zh_vocab):
            raise TaggerError(f"spec has {spec.get('labels')} labels, the vocabulary {len(zh_vocab)}")

    @classmethod
    def load(cls, folder: Path, spec: dict[str, Any], intra_op_threads: int | None = None) -> SequenceTagger:
        folder = Path(folder)
        files = spec.get("files", {})
        try:
            zh = TagVocabulary.load(folder / files["zh_vocab"])
            en = TagVocabulary.load(folder / files["en_vocab"])
            init = make_session(folder / files["concepts"], intra_op_threads)
            step = make_session(folder / files["step"], intra_op_threads)
        except (KeyError, FileNotFoundError, ValueError) as e:
            raise TaggerError(f"{folder}: broken sequence tagger component: {e}") from e
        if zh.lang != "zh" or en.lang != "en":
            raise TaggerError(f"{folder}: vocabulary languages are {zh.lang}/{en.lang}, expected zh/en")
        return cls(init, step, spec, zh, en)

    def decode(
        self, features: np.ndarray, k: int | None = None, user_tags: list[list[str]] | None = None
    ) -> tuple[list[list[tuple[int, float]]], np.ndarray | None]:
        """(label sequences as emitted [(label id, step probability)], concept probabilities [B,Cz] or None)."""
        feeds = self._feeds(features, user_tags)
        if len(next(iter(feeds.values()))) == 0:
            return [], None
        names = ["h", "c"] + ([self._scores_output] if self._scores_output else [])
        h, c, *scores = self._init.run(names, feeds)

        def step(tokens: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, ...]:
            return tuple(self._step.run(["log_probs", "h_out", "c_out"], {"token": tokens, "h": h, "c": c}))

        seqs = greedy_labels(h, c, step, n_labels=len(self.zh_vocab), max_labels=self.max_labels, k=k)
        return seqs, scores[0] if scores else None

    def predict(
        self, features: np.ndarray, k: int | None = None, user_tags: list[list[str]] | None = None
    ) -> list[list[TagScore]]:
        """The emitted tags per image, best first (by concept probability): until the end token, or exactly ``k``."""
        if k is not None and (isinstance(k, bool) or int(k) != k or k < 1):
            raise TagInputError(f"k must be an integer >= 1, got {k!r}")
        seqs, concepts = self.decode(features, k, user_tags)
        results = []
        for i, seq in enumerate(seqs):
            scored = [(j, float(concepts[i, j]) if concepts is not None else p) for j, p in seq]
            scored.sort(key=lambda item: -item[1])
            entries = self.zh_vocab.entries
            results.append([TagScore(entries[j].tag, s, entries[j].english) for j, s in scored])
        return results
