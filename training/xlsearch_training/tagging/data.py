"""Features and multi-hot tag targets of a list of images (what the taggers train and are measured on)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from xlsearch.data.manifest import Record
from xlsearch.encode.tag_vocab import ImageTags, TagVocabulary


@dataclass
class TagData:
    """Features and multi-hot targets of a list of images."""

    ids: list[str]
    x: np.ndarray  # float32 [N, F]
    zh: np.ndarray  # float32 [N, Cz]
    en: np.ndarray  # float32 [N, Ce]

    def subset(self, mask: np.ndarray) -> TagData:
        return TagData(
            [i for i, m in zip(self.ids, mask, strict=True) if m], self.x[mask], self.zh[mask], self.en[mask]
        )

    @property
    def zh_tagged(self) -> np.ndarray:
        return self.zh.sum(axis=1) > 0

    @property
    def en_tagged(self) -> np.ndarray:
        return self.en.sum(axis=1) > 0


def tag_data(
    records: Sequence[Record],
    features: dict[str, np.ndarray],
    tags: ImageTags,
    zh: TagVocabulary,
    en: TagVocabulary,
) -> TagData:
    recs = [r for r in records if r.id in features]
    x = np.stack([features[r.id] for r in recs]).astype(np.float32) if recs else np.zeros((0, 0), np.float32)
    return TagData(
        [r.id for r in recs],
        x,
        zh.multi_hot([tags.zh[r.id] for r in recs]),
        en.multi_hot([tags.en[r.id] for r in recs]),
    )
