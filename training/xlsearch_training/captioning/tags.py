"""Tag inputs for "captioning with tags" (COCO-CN Table XIII): a bag-of-tags vector next to the image vector.

Training images use their true tags (the tag vocabulary of ``xlsearch.encode.tag_vocab``: manual tags plus the content
words of the image's Chinese sentences, restricted to tags seen in at least ``min_count`` training images).
Validation and test images use *predicted* tags, never their own sentences: those of a tagger trained on the same
training split (``xlsearch_training.tagging``; the served Cascading MLP with its label-quantity head decides how
many), or, with ``tag_predictor: "knn"``, a nearest-neighbour vote over the training images' features.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from xlsearch.data.manifest import Manifest
from xlsearch.encode.tag_vocab import TagVocabConfig, extract_image_tags, vocabularies_for


class TagPredictor(Protocol):
    def predict(self, features: np.ndarray) -> list[list[str]]: ...


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class KnnTagPredictor:
    """Tags of the ``neighbours`` nearest training images (cosine on image features), votes weighted by similarity;
    returns the ``per_image`` best (the median number of tags of a training image)."""

    train_ids: list[str]
    train_tags: dict[str, list[str]]
    train_features: np.ndarray  # [N,F], L2-normalised
    neighbours: int
    per_image: int

    @classmethod
    def fit(cls, train_tags: dict[str, list[str]], features: dict[str, np.ndarray], neighbours: int = 10):
        ids = sorted(train_tags)
        per_image = max(1, int(np.median([len(train_tags[i]) for i in ids])))
        feats = _l2n(np.stack([features[i] for i in ids]).astype(np.float32))
        return cls(ids, train_tags, feats, neighbours, per_image)

    def predict(self, features: np.ndarray) -> list[list[str]]:
        sims = _l2n(np.asarray(features, dtype=np.float32)) @ self.train_features.T
        out = []
        for row in sims:
            votes: Counter[str] = Counter()
            for j in np.argsort(-row, kind="stable")[: self.neighbours]:
                for tag in self.train_tags[self.train_ids[j]]:
                    votes[tag] += float(row[j])
            ranked = sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))
            out.append([tag for tag, _ in ranked[: self.per_image]])
        return out


@dataclass
class TaggerPredictor:
    """The tags a trained tagger component predicts (its label-quantity head chooses how many)."""

    tagger: Any  # xlsearch.bundle.tagger.Tagger

    def predict(self, features: np.ndarray) -> list[list[str]]:
        return [[t.tag for t in row] for row in self.tagger.predict(np.asarray(features, dtype=np.float32))]


def trained_tagger(
    manifest: Manifest,
    features: dict[str, np.ndarray],
    folder: Path,
    overrides: dict[str, Any],
    input_feature: dict[str, Any],
    seed: int,
) -> Any:
    """Train (once; reused when ``folder`` holds a component) and load a tagger on the manifest's training split."""
    from xlsearch.bundle.components import read_component
    from xlsearch.bundle.tagger import Tagger
    from xlsearch_training.tagging.component import train_tagger_component
    from xlsearch_training.tagging.config import TaggerConfig

    if not (folder / "component.json").exists():
        train_tagger_component(
            manifest, features, folder, TaggerConfig.from_dict(overrides), input_feature, seed
        )
    return Tagger.load(folder, read_component(folder), intra_op_threads=1)


@dataclass
class TagInputs:
    vocab: list[str]
    true_tags: dict[str, list[str]]  # training images only
    predictor: TagPredictor
    source: str  # how test tags are obtained, for the report

    @classmethod
    def build(
        cls,
        manifest: Manifest,
        features: dict[str, np.ndarray],
        min_count: int = 2,
        neighbours: int = 10,
        tagger_folder: Path | None = None,
        tagger_overrides: dict[str, Any] | None = None,
        input_feature: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> TagInputs:
        """Tag inputs from a tagger trained into ``tagger_folder``, or from the kNN vote when it is None."""
        if tagger_folder is None:
            zh_vocab, _, image_tags = vocabularies_for(manifest, TagVocabConfig(zh_min_count=min_count))
            train = {r.id: zh_vocab.restrict(image_tags.zh[r.id]) for r in manifest.split("train")}
            predictor = KnnTagPredictor.fit(train, features, neighbours)
            return cls(list(zh_vocab.tags), train, predictor, f"kNN vote of {neighbours} training images")
        overrides = {**(tagger_overrides or {})}
        overrides["vocab"] = {"zh_min_count": min_count, **overrides.get("vocab", {})}
        dim = len(next(iter(features.values())))
        feature_spec = input_feature or {"dim": dim, "backbone": None, "preprocess": None}
        tagger = trained_tagger(manifest, features, Path(tagger_folder), overrides, feature_spec, seed)
        image_tags = extract_image_tags(manifest.split("train"))
        train = {r.id: tagger.zh_vocab.restrict(image_tags.zh[r.id]) for r in manifest.split("train")}
        model = tagger.spec.get("model", tagger.spec.get("config", {}).get("model", "tagger"))
        return cls(
            list(tagger.vocabulary), train, TaggerPredictor(tagger), f"trained tagger ({model}, LQP count)"
        )

    def bag(self, tag_lists: list[list[str]]) -> np.ndarray:
        index = {t: i for i, t in enumerate(self.vocab)}
        out = np.zeros((len(tag_lists), len(self.vocab)), dtype=np.float32)
        for row, tags in enumerate(tag_lists):
            for tag in tags:
                if tag in index:
                    out[row, index[tag]] = 1.0
        return out
