"""Subword tokenizers of pretrained towers, torch-free: BERT WordPiece (pure Python) and tokenizer.json through the
`tokenizers` library. Parity with the training side's own tokenizers (cn_clip, open_clip) is in
tests/training/test_pretrained.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xlsearch.encode.subword import HFTokenizer, inside, load_subword_tokenizer
from xlsearch.encode.wordpiece import WordPieceTokenizer

VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "un",
    "##aff",
    "##able",
    "红",
    "色",
    "袋",
    "鼠",
    ",",
    "cafe",
    "a",
]


@pytest.fixture
def vocab_file(tmp_path: Path) -> Path:
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return path


def test_wordpiece_splits_cjk_punctuation_and_pieces_greedily(vocab_file: Path) -> None:
    tk = WordPieceTokenizer(vocab_file, context_length=8)
    assert tk.tokenize("Unaffable红色,袋鼠") == ["un", "##aff", "##able", "红", "色", ",", "袋", "鼠"]
    assert tk.tokenize("Café\u200b\x00 unx") == [
        "cafe",
        "[UNK]",
    ]  # accents stripped, Cf/NUL dropped, no piece
    assert tk.tokenize("a" * 201) == ["[UNK]"]  # longer than max_chars_per_word


def test_wordpiece_encode_adds_cls_sep_truncates_and_pads_to_the_longest(vocab_file: Path) -> None:
    tk = WordPieceTokenizer(vocab_file, context_length=5)
    ids, lengths = tk.encode(["红色袋鼠鼠", "红"])
    assert ids.tolist() == [[2, 7, 8, 9, 3], [2, 7, 3, 0, 0]]
    assert lengths.tolist() == [5, 3]
    padded, _ = tk.encode(["红"], pad_to=7)
    assert padded.tolist() == [[2, 7, 3, 0, 0, 0, 0]]


def test_wordpiece_needs_its_special_tokens(tmp_path: Path) -> None:
    path = tmp_path / "v.txt"
    path.write_text("[PAD]\n[UNK]\nx\n", encoding="utf-8")
    with pytest.raises(ValueError, match="CLS"):
        WordPieceTokenizer(path)


def _tokenizer_json(folder: Path, texts: list[str]) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tk = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["<s>", "<pad>", "</s>", "<unk>"]))
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    path = folder / "tokenizer.json"
    tk.save(str(path))
    return path


def test_hf_tokenizer_adds_specials_truncates_keeping_the_end_and_pads(tmp_path: Path) -> None:
    path = _tokenizer_json(tmp_path, ["a red kangaroo", "a blue bird"])
    tk = HFTokenizer(path, context_length=4)
    assert tk.pad_id == 1
    assert tk.tokenize("a red kangaroo") == ["<s>", "a", "red", "</s>"]  # truncated to 4, the end token kept
    ids, lengths = tk.encode_ids(["a red kangaroo", "bird"])
    assert lengths.tolist() == [4, 3]
    assert ids[1, -1] == 1  # padded with <pad>
    again, _ = tk.encode_tokens([tk.tokenize("a red kangaroo"), tk.tokenize("bird")])
    assert np.array_equal(ids, again)
    assert tk.encode_tokens([["<s>", "never-seen", "</s>"]])[0].tolist() == [[0, 3, 2]]  # unknown -> <unk>


def test_hf_tokenizer_whitespace_clean_is_open_clips(tmp_path: Path) -> None:
    path = _tokenizer_json(tmp_path, ["a red kangaroo & bird"])
    tk = HFTokenizer(path, clean="whitespace")
    assert tk.tokenize("  a   red&amp;amp;\n kangaroo ") == tk.tokenize("a red& kangaroo")
    with pytest.raises(ValueError, match="clean"):
        HFTokenizer(path, clean="lower")


def test_tokenizer_files_stay_inside_the_bundle(tmp_path: Path, vocab_file: Path) -> None:
    assert inside(tmp_path, "vocab.txt") == vocab_file.resolve()
    for name in ("../vocab.txt", "/etc/passwd", "a/../../x"):
        with pytest.raises(ValueError, match="outside"):
            inside(tmp_path / "bundle", name)
    tk = load_subword_tokenizer({"kind": "wordpiece", "file": "vocab.txt", "context_length": 6}, tmp_path)
    assert tk.encode_tokens([tk.tokenize("红色")])[0].tolist() == [[2, 7, 8, 3]]
    with pytest.raises(ValueError, match="unknown subword tokenizer kind"):
        load_subword_tokenizer({"kind": "sentencepiece", "file": "vocab.txt"}, tmp_path)
