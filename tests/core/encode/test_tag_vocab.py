"""Tag vocabularies: the COCO-CN POS rules, min-count / top-N on the training split, English lemmatisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xlsearch.data.manifest import read_manifest
from xlsearch.encode.tag_vocab import (
    ChineseTagExtractor,
    TagVocabConfig,
    TagVocabulary,
    english_sentence_tags,
    lemmatize,
    shared_extractor,
    vocabularies_for,
)

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "tagging"


@pytest.fixture(scope="module")
def extractor() -> ChineseTagExtractor:
    return shared_extractor()


@pytest.fixture(scope="module")
def manifest():
    return read_manifest(FIXTURE, check_images=False)


def test_pos_rule_keeps_nouns_verbs_adjectives_but_not_single_char_verbs_or_adjectives() -> None:
    keep = ChineseTagExtractor.keep
    assert keep("狗", "n") and keep("小狗", "nr") and keep("北京", "ns")  # nouns of any length
    assert keep("睡觉", "v") and keep("柔软", "a") and keep("跑步", "vn")
    assert not keep("躺", "v") and not keep("亮", "v") and not keep("满", "a")  # single-char verb / adjective
    assert not keep("的", "uj") and not keep("在", "p") and not keep("一只", "m") and not keep("很", "zg")
    assert not keep("。", "n")  # punctuation never becomes a tag


def test_extractor_on_real_sentences(extractor: ChineseTagExtractor) -> None:
    # jieba: 两只/m 小狗/nr 躺/v 在/p 柔软/a 的/uj 草地/n 上/f 睡觉/v
    assert extractor.extract("两只小狗躺在柔软的草地上睡觉。") == ["小狗", "柔软", "草地", "睡觉"]
    # 亮/v is a single-character verb: dropped; 满满的/z is not a noun/verb/adjective
    assert extractor.extract("满满的一杯牛奶很亮。") == ["牛奶"]
    assert extractor.extract("一只狗和一只猫，一只狗。") == ["狗", "猫"]  # no duplicates


def test_english_content_words_and_lemmas() -> None:
    assert english_sentence_tags("Two dogs are sleeping on the grass.") == ["dog", "sleeping", "grass"]
    assert [lemmatize(w) for w in ("puppies", "boxes", "glass", "bus", "leaves", "children", "cat")] == [
        "puppy",
        "box",
        "glass",
        "bus",
        "leaf",
        "child",
        "cat",
    ]
    assert english_sentence_tags("It is the 3 of them!") == []  # stop words and numbers only


def test_min_count_uses_training_images_only(manifest) -> None:
    zh, en, tags = vocabularies_for(manifest, TagVocabConfig(zh_min_count=2))
    # 狗 in a2, a3 (a3 twice: counted once per image) and v1 (val: not counted); 宠物 is a manual tag in a1, a2.
    assert zh.tags == ["宠物", "狗", "猫", "草地"]
    assert [e.count for e in zh.entries] == [2, 2, 2, 2]
    assert "独角兽" in tags.zh["t1"] and "独角兽" not in zh  # test-split tags never enter the vocabulary
    assert "躺" not in {t for ts in tags.zh.values() for t in ts}
    zh3, _, _ = vocabularies_for(manifest, TagVocabConfig(zh_min_count=3))
    assert len(zh3) == 0
    zh1, _, _ = vocabularies_for(manifest, TagVocabConfig(zh_min_count=1))
    assert {"小狗", "柔软", "睡觉", "黑狗", "箱子", "牛奶"} <= set(zh1.tags) and len(zh1) == 11


def test_english_top_n_and_manual_tags(manifest) -> None:
    _, en, tags = vocabularies_for(manifest, TagVocabConfig(en_top_n=3))
    assert tags.en["a1"][0] == "puppy"  # manual tag "puppies", lemmatised, comes first
    assert tags.en["a4"][0] == "box"
    assert en.tags == ["dog", "box", "cat"]  # by count desc (3, 2, 2, ...), ties by tag
    assert [e.count for e in en.entries] == [3, 2, 2]


def test_counterparts_multi_hot_and_roundtrip(manifest, tmp_path: Path) -> None:
    zh, en, tags = vocabularies_for(manifest, TagVocabConfig(zh_min_count=2))
    english = {e.tag: e.english for e in zh.entries}
    assert english["狗"] == "dog" and english["猫"] == "cat" and english["草地"] == "grass"
    hot = zh.multi_hot([tags.zh["a1"], ["不存在"]])
    assert hot.shape == (2, 4) and hot[0].tolist() == [1, 0, 0, 1] and hot[1].sum() == 0
    path = zh.save(tmp_path / "tags_zh.json")
    text = path.read_text(encoding="utf-8")
    assert '"tag": "狗"' in text  # human-readable, not escaped
    back = TagVocabulary.load(path)
    assert back.tags == zh.tags and back.entries == zh.entries and back.lang == "zh"
    np.testing.assert_array_equal(back.multi_hot([tags.zh["a2"]]), zh.multi_hot([tags.zh["a2"]]))


def test_bad_vocabulary_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min_count"):
        TagVocabConfig.from_dict({"zh_min_count": 0})
    with pytest.raises(ValueError, match="unknown"):
        TagVocabConfig.from_dict({"min_count": 2})
    (tmp_path / "x.json").write_text('{"format": "other"}', encoding="utf-8")
    with pytest.raises(ValueError, match="not a tag vocabulary"):
        TagVocabulary.load(tmp_path / "x.json")
