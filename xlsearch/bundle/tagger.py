"""Serving side of the Chinese image tagger (torch-free): a tagger component folder -> tags for image features.

The component (written by ``xlsearch_training.tagging``) holds ``tagger.onnx`` — backbone feature (+ optional
multi-hot user tags) -> Chinese tag probabilities, English tag probabilities (cascade / multi-task models) and the
predicted label quantity — and the two tag vocabularies.

How many tags: ``k`` when the caller gives it, else the predicted label quantity rounded and clamped to >= 1
(Niu et al.). English counterpart of a Chinese tag: among the English tags that co-occur with it in the training
images (its stored counterparts, scored by the Dice coefficient), the one maximising Dice x the first stage's
probability of that English tag for this image; with no English output (zh-only MLP) or no co-occurring English
tag, the vocabulary's static best counterpart (or "").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.bundle.components import accepted_input_dims, input_dim
from xlsearch.encode.onnx import make_session
from xlsearch.encode.tag_vocab import TagVocabulary
from xlsearch.errors import InvalidArgument

FEATURE_INPUT, USER_INPUT = "feature", "user_tags"
ZH_OUTPUT, EN_OUTPUT, COUNT_OUTPUT = "zh_probs", "en_probs", "count"

__all__ = ["TagInputError", "TagScore", "Tagger", "TaggerError", "UnknownTagError"]


class TaggerError(InvalidArgument):
    """Bad input to the tagger or a broken tagger component."""


class TagInputError(TaggerError):
    """The request itself is wrong (feature shape, k, user tags)."""


class UnknownTagError(TagInputError):
    """User tags outside the tagger's Chinese vocabulary."""

    def __init__(self, tags: Sequence[str]) -> None:
        self.tags = list(tags)
        super().__init__(f"unknown tag(s) (not in the tag vocabulary): {', '.join(self.tags)}")


@dataclass(frozen=True)
class TagScore:
    tag: str  # Chinese tag
    score: float  # its probability
    english: str  # English counterpart ("" when none is known)


class TagInputs:
    """The input side every tagger component shares: its vocabularies, the feature width it reads and the
    validation of features and user tags into ONNX feeds."""

    def __init__(self, spec: dict[str, Any], zh_vocab: TagVocabulary, en_vocab: TagVocabulary) -> None:
        self.spec, self.zh_vocab, self.en_vocab = spec, zh_vocab, en_vocab
        self.feature_dim = input_dim(spec)
        # attached to a multi-scale bundle, it takes the bundle's wider vectors and reads their leading columns
        self._accepted = accepted_input_dims(spec)
        self._user_input = spec["inputs"].get("user_tags")

    @property
    def vocabulary(self) -> list[str]:
        """The Chinese tags the tagger can predict (and accepts as user tags)."""
        return list(self.zh_vocab.tags)

    @property
    def english_vocabulary(self) -> list[str]:
        return list(self.en_vocab.tags)

    @property
    def accepts_user_tags(self) -> bool:
        return bool(self._user_input)

    def unknown_tags(self, tags: Sequence[str]) -> list[str]:
        """The given tags that are not in the Chinese vocabulary (in order, without duplicates)."""
        return list(dict.fromkeys(t for t in tags if t not in self.zh_vocab))

    def _feeds(self, features: np.ndarray, user_tags: list[list[str]] | None) -> dict[str, np.ndarray]:
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] not in self._accepted:
            raise TagInputError(f"features must have shape [batch, {self.feature_dim}], got {list(x.shape)}")
        x = x[:, : self.feature_dim]
        if not np.isfinite(x).all():
            raise TagInputError("features contain NaN or infinity")
        feeds = {self.spec["inputs"]["feature"]: np.ascontiguousarray(x)}
        if user_tags is not None:
            if len(user_tags) != len(x):
                raise TagInputError(f"user_tags has {len(user_tags)} lists for {len(x)} images")
            unknown = self.unknown_tags([t for tags in user_tags for t in tags])
            if unknown:
                raise UnknownTagError(unknown)
            if not self._user_input and any(user_tags):
                raise TagInputError("this tagger was trained without user tags")
        if self._user_input:
            feeds[self._user_input] = self.zh_vocab.multi_hot(user_tags or [[] for _ in range(len(x))])
        return feeds


class Tagger(TagInputs):
    """A loaded tag-scores tagger component (Cascading MLP + label quantity prediction)."""

    def __init__(
        self,
        session: Any,
        spec: dict[str, Any],
        zh_vocab: TagVocabulary,
        en_vocab: TagVocabulary,
    ) -> None:
        super().__init__(spec, zh_vocab, en_vocab)
        self.session = session
        self._en_output = spec["outputs"].get("en")
        self._outputs = [spec["outputs"]["zh"], spec["outputs"]["count"]] + (
            [self._en_output] if self._en_output else []
        )
        # Counterparts as (english-vocab indices, Dice weights) per Chinese tag.
        self._counterparts: list[tuple[np.ndarray, np.ndarray, list[str]]] = []
        for entry in zh_vocab.entries:
            pairs = [(en_vocab.index[t], s, t) for t, s in entry.counterparts if t in en_vocab.index]
            self._counterparts.append(
                (
                    np.array([p[0] for p in pairs], dtype=np.int64),
                    np.array([p[1] for p in pairs], dtype=np.float64),
                    [p[2] for p in pairs],
                )
            )

    @classmethod
    def load(cls, folder: Path, spec: dict[str, Any], intra_op_threads: int | None = None) -> Tagger:
        folder = Path(folder)
        files = spec.get("files", {})
        try:
            zh = TagVocabulary.load(folder / files["zh_vocab"])
            en = TagVocabulary.load(folder / files["en_vocab"])
            session = make_session(folder / files["model"], intra_op_threads)
        except (KeyError, FileNotFoundError, ValueError) as e:
            raise TaggerError(f"{folder}: broken tagger component: {e}") from e
        if zh.lang != "zh" or en.lang != "en":
            raise TaggerError(f"{folder}: vocabulary languages are {zh.lang}/{en.lang}, expected zh/en")
        return cls(session, spec, zh, en)

    def scores(
        self, features: np.ndarray, user_tags: list[list[str]] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Raw outputs: (zh probabilities [B,Cz], predicted counts [B], en probabilities [B,Ce] or None)."""
        feeds = self._feeds(features, user_tags)
        if len(next(iter(feeds.values()))) == 0:
            return np.zeros((0, len(self.zh_vocab)), np.float32), np.zeros(0, np.float32), None
        out = self.session.run(self._outputs, feeds)
        return out[0], out[1], out[2] if self._en_output else None

    def english_for(self, zh_index: int, en_probs: np.ndarray | None) -> str:
        idx, dice, names = self._counterparts[zh_index]
        if en_probs is None or len(idx) == 0:
            return self.zh_vocab.entries[zh_index].english
        return names[int(np.argmax(dice * en_probs[idx]))]

    def predict(
        self, features: np.ndarray, k: int | None = None, user_tags: list[list[str]] | None = None
    ) -> list[list[TagScore]]:
        """Top tags per image, best first: ``k`` of them, or the predicted label quantity when ``k`` is None."""
        if k is not None and (isinstance(k, bool) or int(k) != k or k < 1):
            raise TagInputError(f"k must be an integer >= 1, got {k!r}")
        zh, counts, en = self.scores(features, user_tags)
        classes = zh.shape[1]
        results = []
        for i in range(len(zh)):
            n = int(k) if k is not None else max(1, int(np.rint(counts[i])))
            n = min(n, classes)
            top = np.argsort(-zh[i], kind="stable")[:n]
            row_en = en[i] if en is not None else None
            results.append(
                [
                    TagScore(self.zh_vocab.tags[j], float(zh[i, j]), self.english_for(int(j), row_en))
                    for j in top
                ]
            )
        return results


def confident_tags(predicted: Sequence[Sequence[TagScore]], min_score: float) -> list[tuple[str, ...]]:
    """Per image, the predicted tags (LQP's top m^) whose probability reaches ``min_score``: what the index stores
    (a tag the tagger itself doubts would only make the tag filter return wrong images)."""
    return [tuple(t.tag for t in scored if t.score >= min_score) for scored in predicted]
