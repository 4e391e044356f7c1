"""Chinese caption generation on the serving side (torch-free): Show and Tell exported as two ONNX graphs and a
beam search in numpy.

- ``image_embedding.onnx``: ``features`` [B,F] (+ ``tags`` [B,T] bag of tags) -> ``h``, ``c`` [B,H]: the LSTM state
  after its first input, ``W_im`` times the image vector.
- ``decoder_step.onnx``: ``token`` [B] int64, ``h``, ``c`` -> ``log_probs`` [B,V], ``h_out``, ``c_out``: one step.

`beam_search` is shared with training (the PyTorch model decodes through the same function with a torch step), so
the exported graphs are checked to give exactly the PyTorch model's sentences.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.bundle.components import accepted_input_dims, input_dim
from xlsearch.encode.onnx import make_session
from xlsearch.encode.text import PAD_ID, UNK_ID, Vocab
from xlsearch.errors import InvalidArgument

__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "CaptionInputError",
    "Captioner",
    "ScoredSentence",
    "StepFn",
    "beam_search",
]

BOS_TOKEN, EOS_TOKEN = "<bos>", "<eos>"
# (tokens [N], h [N,H], c [N,H]) -> (log_probs [N,V], h [N,H], c [N,H])
StepFn = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


class CaptionInputError(InvalidArgument):
    """Bad input to `Captioner.generate` (shape, dimension, values, tags, decoding options)."""


@dataclass(frozen=True)
class ScoredSentence:
    text: str  # Chinese, tokens joined without spaces
    log_prob: float  # sum of the token log-probabilities, <eos> included
    tokens: tuple[str, ...]


@dataclass(order=True)
class _Hyp:
    sort_key: tuple[float, int] = field(init=False, repr=False)
    score: float  # length-normalised (the ranking score)
    order: int  # creation order, breaks ties deterministically
    log_prob: float = field(compare=False)
    ids: tuple[int, ...] = field(compare=False)

    def __post_init__(self) -> None:
        self.sort_key = (-self.score, self.order)


def _banned_by_ngram(ids: tuple[int, ...], n: int) -> set[int]:
    """Tokens that would repeat an n-gram already in ``ids``."""
    if n <= 0 or len(ids) < n - 1:
        return set()
    if n == 1:
        return set(ids)
    prefix = ids[len(ids) - (n - 1) :]
    return {ids[i + n - 1] for i in range(len(ids) - n + 1) if ids[i : i + n - 1] == prefix}


def beam_search(
    h0: np.ndarray,
    c0: np.ndarray,
    step: StepFn,
    *,
    bos: int,
    eos: int,
    beam_size: int = 3,
    n_best: int = 1,
    max_len: int = 20,
    no_repeat_ngram: int = 0,
    length_penalty: float = 1.0,
    banned: Sequence[int] = (PAD_ID, UNK_ID),
) -> list[list[tuple[tuple[int, ...], float]]]:
    """Length-normalised beam search for every row of the initial state; per image up to ``n_best`` (token ids
    without <eos>, summed log-prob), best first. ``beam_size`` 1 is greedy decoding.

    Every step expands each live hypothesis with its ``beam_size`` best next tokens. Expansions ending in <eos> are
    finished (ranked by log-prob / (length incl. <eos>) ** length_penalty); the ``beam_size`` best other
    expansions (by summed log-prob) stay live. An image is done when it has ``beam_size`` finished hypotheses or no
    live one; after ``max_len`` words only <eos> is allowed.
    """
    batch, _ = h0.shape
    # live[b] = list of (ids, log_prob, row of the state arrays)
    live: list[list[tuple[tuple[int, ...], float, int]]] = [[((), 0.0, b)] for b in range(batch)]
    done: list[list[_Hyp]] = [[] for _ in range(batch)]
    h, c = h0, c0
    order = 0
    never = [bos, *banned]
    for t in range(max_len + 1):
        rows = [row for hyps in live for _, _, row in hyps]
        if not rows:
            break
        last = np.array([ids[-1] if ids else bos for hyps in live for ids, _, _ in hyps], dtype=np.int64)
        logp, h_new, c_new = step(last, h[rows], c[rows])
        logp = np.array(logp, dtype=np.float64)
        logp[:, never] = -np.inf
        if t == max_len:
            eos_logp = logp[:, eos].copy()
            logp[:] = -np.inf
            logp[:, eos] = eos_logp
        next_live: list[list[tuple[tuple[int, ...], float, int]]] = []
        offset = 0  # first row of this image's hypotheses in logp / h_new
        for b, hyps in enumerate(live):
            # (-summed log-prob, position, token, hypothesis): sorting ranks by log-prob, ties by position
            candidates: list[tuple[float, int, int, int]] = []
            for j, (ids, log_prob, _) in enumerate(hyps):
                scores = logp[offset + j]
                for tok in _banned_by_ngram(ids, no_repeat_ngram):
                    scores[tok] = -np.inf
                for tok in np.argsort(-scores, kind="stable")[:beam_size]:
                    if np.isfinite(scores[tok]):
                        candidates.append((-(log_prob + scores[tok]), len(candidates), int(tok), j))
            keep: list[tuple[tuple[int, ...], float, int]] = []
            for neg, _, tok, j in sorted(candidates):
                ids = hyps[j][0]
                if tok == eos:
                    done[b].append(_Hyp(-neg / (len(ids) + 1) ** length_penalty, order, -neg, ids))
                    order += 1
                elif len(keep) < beam_size:
                    keep.append((ids + (tok,), -neg, offset + j))
            offset += len(hyps)
            next_live.append([] if len(done[b]) >= beam_size else keep)
        flat_rows = [flat for hyps in next_live for _, _, flat in hyps]
        h, c = h_new[flat_rows], c_new[flat_rows]
        live, pos = [], 0
        for hyps in next_live:
            live.append([(ids, lp, pos + i) for i, (ids, lp, _) in enumerate(hyps)])
            pos += len(hyps)
    out = []
    for hyps in done:
        hyps.sort(key=lambda x: x.sort_key)
        out.append([(x.ids, x.log_prob) for x in hyps[:n_best]])
    return out


class Captioner:
    """A loaded captioner component (see the module docstring). Torch-free."""

    def __init__(
        self,
        embed_session: Any,
        step_session: Any,
        vocab: Vocab,
        spec: dict[str, Any],
        tag_vocab: list[str] | None = None,
        sentence_pool: list[str] | None = None,
    ) -> None:
        self.spec = spec
        self.vocab = vocab
        self._embed, self._step = embed_session, step_session
        self.feature_dim = input_dim(spec)
        # attached to a multi-scale bundle, it takes the bundle's wider vectors and reads their leading columns
        self._accepted = accepted_input_dims(spec)
        self.max_len = int(spec.get("max_len", 20))
        self.length_penalty = float(spec.get("length_penalty", 1.0))
        self.tag_vocab = tag_vocab
        self._tag_index = {t: i for i, t in enumerate(tag_vocab or [])}
        self.sentence_pool = sentence_pool or []
        self.bos, self.eos = vocab.tokens.index(BOS_TOKEN), vocab.tokens.index(EOS_TOKEN)

    @classmethod
    def load(cls, folder: Path, spec: dict, intra_op_threads: int | None = None) -> Captioner:
        folder = Path(folder)
        embed = make_session(folder / spec["image_embedding"], intra_op_threads)
        step = make_session(folder / spec["decoder_step"], intra_op_threads)
        vocab = Vocab.load(folder / spec["vocab"])
        tags = json.loads((folder / spec["tag_vocab"]).read_text("utf-8")) if spec.get("tag_vocab") else None
        pool = (
            json.loads((folder / spec["sentence_pool"]).read_text("utf-8"))
            if spec.get("sentence_pool")
            else None
        )
        return cls(embed, step, vocab, spec, tags, pool)

    @property
    def needs_tags(self) -> bool:
        return self.tag_vocab is not None

    def tag_vectors(self, tags: list[list[str]]) -> np.ndarray:
        """Bag-of-tags rows (1 for each known tag; tags outside the vocabulary are ignored)."""
        out = np.zeros((len(tags), len(self._tag_index)), dtype=np.float32)
        for i, row in enumerate(tags):
            if isinstance(row, str) or not all(isinstance(t, str) for t in row):
                raise CaptionInputError(f"tags[{i}] must be a list of strings")
            for t in row:
                j = self._tag_index.get(t)
                if j is not None:
                    out[i, j] = 1.0
        return out

    def initial_state(
        self, features: np.ndarray, tags: list[list[str]] | None = None
    ) -> tuple[np.ndarray, ...]:
        features = self._check_features(features)
        feeds = {"features": features}
        if self.needs_tags:
            if tags is None:
                raise CaptionInputError(
                    "this captioner reads tags as well as the image: pass tags=[[...], ...]"
                )
            if len(tags) != len(features):
                raise CaptionInputError(f"got {len(tags)} tag lists for {len(features)} images")
            feeds["tags"] = self.tag_vectors(tags)
        elif tags is not None:
            raise CaptionInputError("this captioner does not read tags (needs_tags is False)")
        if len(features) == 0:  # ONNX Runtime aborts on an empty LSTM batch
            hidden = int(self.spec["hidden"])
            return np.zeros((0, hidden), np.float32), np.zeros((0, hidden), np.float32)
        h, c = self._embed.run(["h", "c"], feeds)
        return h, c

    def step(self, tokens: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self._step.run(["log_probs", "h_out", "c_out"], {"token": tokens, "h": h, "c": c}))

    def generate(
        self,
        features: np.ndarray,
        n_best: int = 1,
        beam_size: int = 3,
        max_len: int | None = None,
        tags: list[list[str]] | None = None,
        no_repeat_ngram: int = 0,
    ) -> list[list[ScoredSentence]]:
        """The ``n_best`` sentences per image (best first). ``features``: [B,F] image vectors (the bundle image
        encoder's ``feature`` output); ``beam_size`` 1 = greedy."""
        if not (isinstance(beam_size, int) and 1 <= beam_size <= 20):
            raise CaptionInputError(f"beam_size must be an integer in 1..20, got {beam_size!r}")
        if not (isinstance(n_best, int) and 1 <= n_best <= beam_size):
            raise CaptionInputError(
                f"n_best must be an integer in 1..beam_size ({beam_size}), got {n_best!r}"
            )
        max_len = self.max_len if max_len is None else max_len
        if not (isinstance(max_len, int) and 1 <= max_len <= 100):
            raise CaptionInputError(f"max_len must be an integer in 1..100, got {max_len!r}")
        if not (isinstance(no_repeat_ngram, int) and no_repeat_ngram >= 0):
            raise CaptionInputError(
                f"no_repeat_ngram must be a non-negative integer, got {no_repeat_ngram!r}"
            )
        h, c = self.initial_state(features, tags)
        if len(h) == 0:
            return []
        results = beam_search(
            h,
            c,
            self.step,
            bos=self.bos,
            eos=self.eos,
            beam_size=beam_size,
            n_best=n_best,
            max_len=max_len,
            no_repeat_ngram=no_repeat_ngram,
            length_penalty=self.length_penalty,
        )
        return [[self._sentence(ids, lp) for ids, lp in hyps] for hyps in results]

    def _sentence(self, ids: tuple[int, ...], log_prob: float) -> ScoredSentence:
        tokens = tuple(self.vocab.decode(ids))
        return ScoredSentence("".join(tokens), float(log_prob), tokens)

    def _check_features(self, features: np.ndarray) -> np.ndarray:
        arr = np.asarray(features)
        if arr.ndim != 2 or arr.shape[1] not in self._accepted:
            raise CaptionInputError(
                f"features must have shape [B, {self.feature_dim}], got {list(arr.shape)}"
            )
        arr = arr[:, : self.feature_dim]
        if not np.issubdtype(arr.dtype, np.number):
            raise CaptionInputError(f"features must be numeric, got dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise CaptionInputError("features contain NaN or infinite values")
        return arr
