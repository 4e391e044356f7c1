"""Pretrained towers (issue 13): the serving tokenizers equal the training side's own (cn_clip's BERT tokenizer,
open_clip's HFTokenizer) on real Chinese text (every Tux Paint description), every exported tower equals PyTorch in
ONNX Runtime (max abs diff < 1e-4) for any batch and sequence length, and the ONNX sentence-encoder kind round-trips
a transformer built locally."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("cn_clip")
pytest.importorskip("transformers")

from xlsearch.data.datasets.tuxpaint import find_stamps, parse_description  # noqa: E402
from xlsearch.encode.sentence import build_sentence_encoder  # noqa: E402
from xlsearch.encode.subword import HFTokenizer  # noqa: E402
from xlsearch.encode.wordpiece import WordPieceTokenizer  # noqa: E402
from xlsearch_training.pretrained.cn_clip import build_cn_clip, cn_clip_vocab  # noqa: E402
from xlsearch_training.pretrained.export import (  # noqa: E402
    export_image_tower,
    export_text_tower,
    image_parity,
    text_parity,
)
from xlsearch_training.pretrained.open_clip_hf import build_open_clip, train_local_tokenizer  # noqa: E402

STAMPS = Path("/usr/share/tuxpaint/stamps")


@pytest.fixture(scope="module")
def tux_texts() -> list[str]:
    """Every Tux Paint description line: English, zh_CN, zh_TW and the other languages (real Chinese text)."""
    if not STAMPS.is_dir():
        pytest.skip("tuxpaint-stamps-default is not installed")
    stamps, _ = find_stamps(STAMPS)
    texts = []
    for stamp in stamps:
        english, translations = parse_description(stamp.txt)
        texts += [english, *translations.values()]
    texts = [t for t in dict.fromkeys(texts) if t]
    assert sum(any("\u4e00" <= c <= "\u9fff" for c in t) for t in texts) > 1000  # real Chinese lines
    return texts + ["山" * 80, "  ＣＡＴ，猫！\t café\u200b naïve 😀 &amp; ", ""]


@pytest.fixture(scope="module")
def xlmr_tokenizer(tmp_path_factory: pytest.TempPathFactory, tux_texts: list[str]) -> Path:
    return train_local_tokenizer(tux_texts[::2], tmp_path_factory.mktemp("tok") / "xlmr", vocab_size=3000)


def test_wordpiece_equals_cn_clip_tokenize_on_every_tux_paint_description(tux_texts: list[str]) -> None:
    from cn_clip.clip import tokenize

    ours, _ = WordPieceTokenizer(cn_clip_vocab()).encode(tux_texts, pad_to=52)
    theirs = tokenize(tux_texts, context_length=52).numpy()
    mismatched = [t for t, a, b in zip(tux_texts, ours, theirs, strict=True) if not np.array_equal(a, b)]
    assert not mismatched, mismatched[:5]
    assert (theirs[:, -1] != 0).any()  # some lines fill the context: truncation is exercised


def test_hf_tokenizer_equals_open_clip_hftokenizer(tux_texts: list[str], xlmr_tokenizer: Path) -> None:
    """A SentencePiece-Unigram tokenizer built locally, read by open_clip's HFTokenizer (training) and by
    tokenizers alone (serving), on texts it was and was not trained on."""
    from open_clip.tokenizer import HFTokenizer as OpenClipHF

    theirs = OpenClipHF(str(xlmr_tokenizer), context_length=77)(tux_texts).numpy()
    serving = HFTokenizer(xlmr_tokenizer / "tokenizer.json", context_length=77, pad_id=1, clean="whitespace")
    ids, _ = serving.encode_tokens([serving.tokenize(t) for t in tux_texts])
    ours = np.full(theirs.shape, 1)
    ours[:, : ids.shape[1]] = ids
    mismatched = [t for t, a, b in zip(tux_texts, ours, theirs, strict=True) if not np.array_equal(a, b)]
    assert not mismatched, mismatched[:5]
    assert (theirs[:, -1] == 2).any()  # truncated rows keep </s>


def _dynamic(path: Path, name: str) -> list[str | int]:
    model = onnx.load(str(path))
    (inp,) = [i for i in model.graph.input if i.name == name]
    return [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]


@pytest.mark.parametrize("family", ["cn_clip", "open_clip"])
def test_towers_export_with_dynamic_batch_and_sequence_and_match_pytorch(
    family: str, tmp_path: Path, xlmr_tokenizer: Path
) -> None:
    towers = (
        build_cn_clip("tiny", "random", seed=3)
        if family == "cn_clip"
        else build_open_clip("tiny", "random", seed=3, tokenizer_dir=xlmr_tokenizer)
    )
    pad = 0 if family == "cn_clip" else 1
    size = towers.preprocess.image_size
    export_image_tower(towers.image, tmp_path / "image.onnx", size)
    export_text_tower(towers.text, tmp_path / "text.onnx", pad, [5, 6, 7, 8, 9])
    assert _dynamic(tmp_path / "image.onnx", "pixels")[0] == "batch"
    assert _dynamic(tmp_path / "text.onnx", "token_ids") == ["batch", "sequence"]
    rng = np.random.default_rng(0)
    for batch in (1, 4):
        diff = image_parity(towers.image, tmp_path / "image.onnx", rng.normal(size=(batch, 3, size, size)))
        assert diff < 1e-4
    vocab = int(towers.info.get("text_config", {}).get("vocab_size", 21128))
    for batch, length in ((1, 1), (3, 9), (2, 52)):
        ids = rng.integers(4, vocab, size=(batch, length))
        ids[-1, max(1, length // 2) :] = pad  # a padded row
        assert text_parity(towers.text, tmp_path / "text.onnx", ids) < 1e-4
    # padding is masked: the same sentence padded further gives the same vector
    a = np.array([[5, 6, 7]])
    b = np.array([[5, 6, 7] + [pad] * 10])
    with torch.no_grad():
        va, vb = (towers.text(torch.from_numpy(x)).numpy() for x in (a, b))
    assert np.abs(va - vb).max() < 1e-5


def test_random_towers_are_seeded() -> None:
    a, b, c = (build_cn_clip("tiny", "random", seed=s) for s in (1, 1, 2))
    ids = torch.tensor([[101, 2769, 102]])
    with torch.no_grad():
        va, vb, vc = (t.text(ids) for t in (a, b, c))
    assert torch.equal(va, vb) and not torch.allclose(va, vc)


def test_onnx_sentence_encoder_round_trips_a_local_transformer(tmp_path: Path, tux_texts: list[str]) -> None:
    """A tiny BERT with a WordPiece tokenizer trained here -> ONNX folder -> the 'onnx' kind (from the bundle folder
    given as root) gives the PyTorch mean-pooled vectors, with the role prefixes applied."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from xlsearch_training.pretrained.sentence_export import export_sentence_encoder, torch_sentence_vectors

    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(tux_texts, vocab_size=1500)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=wp._tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=wp.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, attn_implementation="eager",
    )  # fmt: skip
    model = BertModel(config).eval()
    bundle = tmp_path / "bundle"
    spec = export_sentence_encoder(
        model,
        tokenizer,
        bundle / "sentence_encoder",
        "tiny-bert",
        "mean",
        {"query": "query: ", "passage": "passage: "},
    )
    for key in ("model", "tokenizer"):
        spec[key] = f"sentence_encoder/{spec[key]}"
    encoder = build_sentence_encoder(spec, root=bundle)
    texts = tux_texts[:40:3]
    got = encoder.encode(texts, "query")
    want = torch_sentence_vectors(model, tokenizer, ["query: " + t for t in texts])
    assert got.shape == (len(texts), 32) and encoder.dim == 32
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(encoder.encode(texts[:1], "passage") - got[:1]).max() > 1e-3  # the prefix matters
    with pytest.raises(ValueError, match="outside"):
        build_sentence_encoder({**spec, "model": "../elsewhere.onnx"}, root=bundle)
