"""Chinese and English tag vocabularies built from a manifest's training split (COCO-CN Sec. III-C), torch-free.

Chinese tags of an image = its manual ``tags_zh`` plus the words jieba's part-of-speech tagger finds in its Chinese
sentences: nouns, verbs and adjectives, without single-character verbs and adjectives ("满", "亮", "穿" are too
generic). English tags = ``tags_en`` plus the content words of the English sentences (stop words removed, simple
plural/inflection lemmatisation). The vocabulary keeps the Chinese tags seen in at least ``zh_min_count`` training
images and the ``en_top_n`` most frequent English tags. An image's ground truth is its tag set restricted to the
vocabulary; the same functions derive it for training and evaluation.

Vocabulary files are JSON: one entry per tag with its training image count and, for Chinese, its English
counterparts (the English tags that co-occur with it most, by Dice coefficient over training images), so a reader
can check what the tagger knows and the server can name a Chinese tag in English.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.data.manifest import Manifest, Record
from xlsearch.encode.text import EnglishTokenizer

FORMAT = "xlsearch.tagvocab/1"
ZH_KEPT_POS = (
    "n",
    "v",
    "a",
)  # first letter of jieba's POS flags: nouns (n, nr, ns, nz, vn is a verb-noun), ...
_SINGLE_CHAR_DROPPED = ("v", "a")  # single-character verbs and adjectives are over generic (COCO-CN III-C)
_JIEBA_LOCK = threading.Lock()
_JIEBA_LOG_LOCK = threading.Lock()

# A compact English stop list (articles, pronouns, auxiliaries, prepositions, conjunctions, quantifiers).
EN_STOP_WORDS = frozenset(
    """a an the and or but nor so yet if then than that this these those there here it its it's he she they them
    their his her him hers we us our ours you your yours i me my mine who whom whose which what when where why how
    is am are was were be been being do does did done doing have has had having will would shall should can could may
    might must not no nor only own same too very just also of at by for with about against between into through
    during before after above below to from up down in out on off over under again further once all any both each
    few more most other some such as until while because s t don doesn isn aren wasn weren won shouldn one two
    three four five six seven eight nine ten etc e g ie eg vs via per onto upon within without along around among
    across toward towards near like many much lot lots called mean means used""".split()
)
# Irregular plurals and inflections the suffix rules below would get wrong.
_IRREGULAR = {
    "children": "child",
    "men": "man",
    "women": "woman",
    "people": "person",
    "feet": "foot",
    "teeth": "tooth",
    "mice": "mouse",
    "geese": "goose",
    "oxen": "ox",
    "dice": "die",
    "leaves": "leaf",
    "wolves": "wolf",
    "knives": "knife",
    "wives": "wife",
    "lives": "life",
    "halves": "half",
    "shelves": "shelf",
    "calves": "calf",
    "loaves": "loaf",
    "thieves": "thief",
    "sheep": "sheep",
    "fish": "fish",
    "deer": "deer",
    "series": "series",
    "species": "species",
    "christmas": "christmas",
    "gas": "gas",
    "canvas": "canvas",
    "news": "news",
}
_NO_STRIP = ("ss", "us", "is", "ous", "ics")  # glass, bus, axis, famous, physics stay as they are


def lemmatize(word: str) -> str:
    """Simple English lemmatiser: irregular forms, then plural suffixes (-ies, -ves, -ches/-shes/-xes/-zes/-ses,
    -oes, -s). Verbs keep their -ing/-ed forms (too ambiguous without a POS tagger)."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) <= 3 or not word.endswith("s") or word.endswith(_NO_STRIP):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "zes", "sses")):
        return word[:-2]
    if word.endswith("oes"):
        return word[:-2]
    return word[:-1]


def _normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text).strip().lower()


class ChineseTagExtractor:
    """Nouns, verbs and adjectives of a Chinese sentence via jieba.posseg on a private jieba tokenizer."""

    def __init__(self) -> None:
        self._pos: Any = None

    def _tagger(self) -> Any:
        if self._pos is None:
            with _JIEBA_LOCK:
                if self._pos is None:
                    import jieba
                    import jieba.posseg

                    with _JIEBA_LOG_LOCK:
                        logger = logging.getLogger("jieba")
                        old = logger.level
                        logger.setLevel(logging.WARNING)
                        try:
                            tk = jieba.Tokenizer()
                            tk.initialize()
                        finally:
                            logger.setLevel(old)
                    self._pos = jieba.posseg.POSTokenizer(tk)
        return self._pos

    @staticmethod
    def keep(word: str, flag: str) -> bool:
        """The COCO-CN rule for one (word, POS flag) pair."""
        if not flag or flag[0] not in ZH_KEPT_POS:
            return False
        if flag[0] in _SINGLE_CHAR_DROPPED and len(word) == 1:
            return False
        return any(unicodedata.category(ch)[0] in "LN" for ch in word)

    def extract(self, sentence: str) -> list[str]:
        """Tags of one sentence, in order of appearance, without duplicates."""
        out: list[str] = []
        for pair in self._tagger().lcut(_normalize(sentence)):
            word = pair.word.strip()
            if word and self.keep(word, pair.flag) and word not in out:
                out.append(word)
        return out


_EN_TOKENIZER = EnglishTokenizer()
_HAS_LETTER = re.compile(r"[^\W\d_]")


def english_sentence_tags(sentence: str) -> list[str]:
    """Content words of an English sentence (lowercase, stop words and numbers removed, lemmatised)."""
    out: list[str] = []
    for token in _EN_TOKENIZER.tokenize(sentence):
        token = token.replace("'", "")
        if len(token) < 2 or token in EN_STOP_WORDS or not _HAS_LETTER.search(token):
            continue
        lemma = lemmatize(token)
        if lemma not in EN_STOP_WORDS and lemma not in out:
            out.append(lemma)
    return out


def manual_tags(tags: Iterable[str]) -> list[str]:
    out: list[str] = []
    for tag in tags:
        tag = _normalize(tag)
        if tag and tag not in out:
            out.append(tag)
    return out


def image_tags_zh(record: Record, extractor: ChineseTagExtractor) -> list[str]:
    """All Chinese tags of one image: manual tags first, then the sentence words."""
    tags = manual_tags(record.tags_zh)
    for sentence in record.zh:
        tags.extend(t for t in extractor.extract(sentence) if t not in tags)
    return tags


def image_tags_en(record: Record) -> list[str]:
    """All English tags of one image: manual tags (lemmatised when single words), then the sentence content words."""
    tags = [lemmatize(t) if " " not in t else t for t in manual_tags(record.tags_en)]
    tags = list(dict.fromkeys(tags))
    for sentence in record.en:
        tags.extend(t for t in english_sentence_tags(sentence) if t not in tags)
    return tags


@dataclass(frozen=True)
class TagVocabConfig:
    zh_min_count: int = 2  # COCO-CN uses 20 on ~18k training images; Tux Paint has ~540
    en_top_n: int = 512
    en_min_count: int = 1
    counterparts: int = 3  # English counterparts stored per Chinese tag

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TagVocabConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown tag vocabulary option(s): {', '.join(sorted(unknown))}")
        cfg = cls(**data)
        if cfg.zh_min_count < 1 or cfg.en_min_count < 1 or cfg.en_top_n < 1:
            raise ValueError("zh_min_count, en_min_count and en_top_n must be >= 1")
        return cfg


@dataclass(frozen=True)
class TagEntry:
    tag: str
    count: int  # training images carrying the tag
    english: str = ""  # best English counterpart ("" for English tags or when none co-occurs)
    counterparts: tuple[tuple[str, float], ...] = ()  # (English tag, Dice coefficient), best first


class TagVocabulary:
    """An ordered tag list (by training count desc, then tag) with counts and, for Chinese, English counterparts."""

    def __init__(self, lang: str, entries: Sequence[TagEntry], meta: dict[str, Any] | None = None) -> None:
        if lang not in ("zh", "en"):
            raise ValueError(f"tag vocabulary language must be 'zh' or 'en', got {lang!r}")
        self.lang = lang
        self.entries = list(entries)
        self.meta = dict(meta or {})
        self.tags = [e.tag for e in self.entries]
        self.index = {t: i for i, t in enumerate(self.tags)}
        if len(self.index) != len(self.tags):
            raise ValueError("tag vocabulary has duplicate tags")

    def __len__(self) -> int:
        return len(self.tags)

    def __contains__(self, tag: object) -> bool:
        return tag in self.index

    def restrict(self, tags: Iterable[str]) -> list[str]:
        """The tags (in order) that are in the vocabulary."""
        return [t for t in tags if t in self.index]

    def multi_hot(self, tag_lists: Sequence[Iterable[str]]) -> np.ndarray:
        """float32 [N, len(self)]; tags outside the vocabulary are ignored."""
        out = np.zeros((len(tag_lists), len(self)), dtype=np.float32)
        for row, tags in enumerate(tag_lists):
            for t in tags:
                j = self.index.get(t)
                if j is not None:
                    out[row, j] = 1.0
        return out

    def to_dict(self) -> dict[str, Any]:
        tags = []
        for e in self.entries:
            item: dict[str, Any] = {"tag": e.tag, "count": e.count}
            if self.lang == "zh":
                item["english"] = e.english
                item["counterparts"] = [[t, round(s, 4)] for t, s in e.counterparts]
            tags.append(item)
        return {"format": FORMAT, "lang": self.lang, **self.meta, "size": len(self), "tags": tags}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TagVocabulary:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a tag vocabulary (format {data.get('format')!r}, expected {FORMAT!r})")
        entries = [
            TagEntry(
                tag=item["tag"],
                count=int(item["count"]),
                english=item.get("english", ""),
                counterparts=tuple((t, float(s)) for t, s in item.get("counterparts", [])),
            )
            for item in data["tags"]
        ]
        meta = {k: v for k, v in data.items() if k not in ("format", "lang", "size", "tags")}
        return cls(data["lang"], entries, meta)

    def save(self, path: str | PathLike[str]) -> Path:
        """JSON with one tag per line, so the file reads (and diffs) as a table."""
        path = Path(path)
        data = self.to_dict()
        tags = data.pop("tags")
        head = json.dumps(data, ensure_ascii=False, indent=1)[:-2]  # drop the closing "\n}"
        rows = ",\n".join("  " + json.dumps(t, ensure_ascii=False) for t in tags)
        path.write_text(f'{head},\n "tags": [\n{rows}\n ]\n}}\n', encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | PathLike[str]) -> TagVocabulary:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from e


@dataclass
class ImageTags:
    """Per-image tag lists (all tags found, not yet restricted to a vocabulary), keyed by record id."""

    zh: dict[str, list[str]]
    en: dict[str, list[str]]


_SHARED: list[ChineseTagExtractor] = []


def shared_extractor() -> ChineseTagExtractor:
    """One process-wide extractor (jieba's dictionary takes a second or more to load)."""
    with _JIEBA_LOCK:
        if not _SHARED:
            _SHARED.append(ChineseTagExtractor())
    return _SHARED[0]


def extract_image_tags(records: Sequence[Record], extractor: ChineseTagExtractor | None = None) -> ImageTags:
    extractor = extractor or shared_extractor()
    return ImageTags(
        zh={r.id: image_tags_zh(r, extractor) for r in records},
        en={r.id: image_tags_en(r) for r in records},
    )


def _ranked(counts: Counter[str], min_count: int, top_n: int | None) -> list[str]:
    kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
    return kept if top_n is None else kept[:top_n]


def build_vocabularies(
    records: Sequence[Record], config: TagVocabConfig = TagVocabConfig(), tags: ImageTags | None = None
) -> tuple[TagVocabulary, TagVocabulary]:
    """(Chinese, English) vocabularies from ``records`` — pass the TRAINING records only.

    Counts are per image (a tag repeated in one image's sentences counts once). ``tags`` may carry already
    extracted tags (a superset of ``records`` is fine)."""
    tags = tags or extract_image_tags(records)
    zh_counts = Counter(t for r in records for t in set(tags.zh[r.id]))
    en_counts = Counter(t for r in records for t in set(tags.en[r.id]))
    zh_tags = _ranked(zh_counts, config.zh_min_count, None)
    en_tags = _ranked(en_counts, config.en_min_count, config.en_top_n)
    en_set = set(en_tags)
    pair_counts: dict[str, Counter[str]] = {t: Counter() for t in zh_tags}
    for r in records:
        en_here = [e for e in set(tags.en[r.id]) if e in en_set]
        for z in set(tags.zh[r.id]):
            if z in pair_counts:
                pair_counts[z].update(en_here)
    zh_entries = []
    for z in zh_tags:
        dice = sorted(
            ((e, round(2.0 * c / (zh_counts[z] + en_counts[e]), 4)) for e, c in pair_counts[z].items()),
            key=lambda item: (-item[1], -en_counts[item[0]], item[0]),
        )[: config.counterparts]
        zh_entries.append(TagEntry(z, zh_counts[z], dice[0][0] if dice else "", tuple(dice)))
    meta = {"training_images": len(records), "config": asdict(config)}
    zh = TagVocabulary("zh", zh_entries, meta)
    en = TagVocabulary("en", [TagEntry(e, en_counts[e]) for e in en_tags], meta)
    return zh, en


def vocabularies_for(
    manifest: Manifest, config: TagVocabConfig = TagVocabConfig()
) -> tuple[TagVocabulary, TagVocabulary, ImageTags]:
    """Vocabularies from the manifest's training split, plus every image's extracted tags."""
    tags = extract_image_tags(manifest.records)
    zh, en = build_vocabularies(manifest.split("train"), config, tags)
    return zh, en, tags
