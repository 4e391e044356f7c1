"""Captioning: vocabulary and segmentation, beam search against a brute-force best sequence, ONNX parity with the
PyTorch model (greedy and beam), bad input, and the experiment CLI end to end on the tiny Tux Paint run."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from xlsearch.bundle.captioner import Captioner, CaptionInputError, beam_search

torch = pytest.importorskip("torch")

from xlsearch_training.captioning.vocab import (  # noqa: E402
    BOS_ID,
    EOS_ID,
    build_caption_vocab,
    encode_caption,
    segment_all,
)

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "word_dim": 16,
    "hidden": 24,
    "dropout": 0.0,
    "min_count": 1,
    "batch_size": 32,
    "epochs": 2,
    "lr": 0.01,
    "sequential_epochs": 1,
    "tag_min_count": 2,
    "tag_neighbours": 3,
    "tagger": {"epochs": 2, "lqp_epochs": 2, "hidden": 16, "lqp_hidden": [8]},
}


# -- vocabulary -------------------------------------------------------------------------------------------------
def test_segmentation_and_vocab() -> None:
    tokens = segment_all(["一只青蛙。", "一只绿色的青蛙！", "字母Ｋ。"], "zh")
    assert tokens == [["一只", "青蛙"], ["一只", "绿色", "的", "青蛙"], ["字母", "k"]]
    vocab = build_caption_vocab(tokens, min_count=2)
    assert vocab.tokens == ["<pad>", "<unk>", "<bos>", "<eos>", "一只", "青蛙"]
    assert vocab.tokens[BOS_ID] == "<bos>" and vocab.tokens[EOS_ID] == "<eos>"
    assert encode_caption(["一只", "绿色", "青蛙"], vocab, max_len=20) == [BOS_ID, 4, 1, 5, EOS_ID]
    assert encode_caption(["一只", "绿色", "青蛙"], vocab, max_len=1) == [BOS_ID, 4, EOS_ID]
    assert len(build_caption_vocab(tokens, min_count=1)) == 4 + 6


# -- beam search on a hand-made model ------------------------------------------------------------------------------
# tokens: 0 pad, 1 unk, 2 bos, 3 eos, 4 A, 5 B, 6 C. The state h is the one-hot of the last token.
_NEXT = {
    2: {4: 0.6, 5: 0.4},
    4: {5: 0.36, 6: 0.34, 3: 0.30},
    5: {3: 0.95, 4: 0.03, 6: 0.02},
    6: {3: 0.90, 4: 0.05, 5: 0.05},
}


def _markov_step(tokens: np.ndarray, h: np.ndarray, c: np.ndarray):
    logp = np.full((len(tokens), 7), -1e9, dtype=np.float32)
    for row, tok in enumerate(tokens):
        for nxt, p in _NEXT[int(tok)].items():
            logp[row, nxt] = math.log(p)
    h = np.eye(7, dtype=np.float32)[tokens]
    return logp, h, c


def _brute_force_best(max_words: int) -> tuple[tuple[int, ...], float]:
    best, best_seq = -math.inf, ()
    for n in range(max_words + 1):
        for seq in itertools.product((4, 5, 6), repeat=n):
            lp, last = 0.0, 2
            for tok in (*seq, 3):
                p = _NEXT[last].get(tok)
                if p is None:
                    break
                lp, last = lp + math.log(p), tok
            else:
                if lp / (n + 1) > best:
                    best, best_seq = lp / (n + 1), seq
    return best_seq, best


def test_beam_search_finds_the_best_sequence_greedy_does_not() -> None:
    h0 = np.zeros((2, 7), dtype=np.float32)  # two identical images: batching must not mix them up
    kw = {"bos": 2, "eos": 3, "max_len": 4}
    best_seq, best_score = _brute_force_best(4)
    assert best_seq == (5,)  # "B": log(.4 * .95) / 2
    greedy = beam_search(h0, h0, _markov_step, beam_size=1, **kw)
    assert [hyps[0][0] for hyps in greedy] == [(4, 5), (4, 5)]  # A (.6) then B (.36) then eos
    assert greedy[0][0][1] == pytest.approx(math.log(0.6 * 0.36 * 0.95), rel=1e-6)
    beam = beam_search(h0, h0, _markov_step, beam_size=3, n_best=3, **kw)
    for hyps in beam:
        assert hyps[0][0] == best_seq
        assert hyps[0][1] / 2 == pytest.approx(best_score, rel=1e-6)
        scores = [lp / (len(ids) + 1) for ids, lp in hyps]
        assert scores == sorted(scores, reverse=True) and len(hyps) == 3


def test_beam_search_max_len_and_no_repeat() -> None:
    def loop_step(tokens, h, c):  # always prefers A, eos is unlikely
        logp = np.log(np.full((len(tokens), 7), 1e-6, dtype=np.float32))
        logp[:, 4], logp[:, 5], logp[:, 3] = math.log(0.7), math.log(0.2), math.log(0.1)
        return logp, h, c

    h0 = np.zeros((1, 4), dtype=np.float32)
    [[(ids, _)]] = beam_search(h0, h0, loop_step, bos=2, eos=3, beam_size=1, max_len=3)
    assert ids == (4, 4, 4)  # <eos> forced after max_len words
    [[(ids, _)]] = beam_search(h0, h0, loop_step, bos=2, eos=3, beam_size=1, max_len=3, no_repeat_ngram=1)
    assert ids == (4, 5)  # A and B may not repeat; eos is the only token left


# -- the tiny Tux Paint run ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_split(tiny_run):
    from xlsearch.data.manifest import read_manifest
    from xlsearch_training.inputs import ensure_backbone, image_vectors

    backbone = ensure_backbone(tiny_run.runs, {"kind": "efficientnet_lite0"}, "center")
    split = read_manifest(tiny_run.runs / "splits" / "seed0")
    features = image_vectors(
        split, backbone.onnx, backbone.spec["preprocess"], tiny_run.runs / "cache" / "features"
    )
    input_feature = {k: backbone.spec[k] for k in ("dim", "backbone", "preprocess")}
    return split, features, input_feature


@pytest.mark.parametrize("strategy", ["monolingual", "tags"])
def test_onnx_decoding_matches_pytorch(tiny_split, tmp_path: Path, strategy: str) -> None:
    from xlsearch_training.captioning.config import CaptionerConfig
    from xlsearch_training.captioning.decode import decode
    from xlsearch_training.captioning.export import write_captioner
    from xlsearch_training.captioning.inputs import split_data
    from xlsearch_training.captioning.train import train_strategy

    torch.set_num_threads(1)
    split, features, input_feature = tiny_split
    cfg = CaptionerConfig.from_dict({**TINY, "epochs": 3})
    data = split_data(split, features, cfg, [strategy], None, tmp_path / "work", input_feature, 0)
    trained = train_strategy(strategy, data, cfg, seed=0)
    write_captioner(trained, tmp_path / "captioner", cfg, input_feature, ["一只青蛙。"])
    spec = json.loads((tmp_path / "captioner" / "component.json").read_text("utf-8"))
    captioner = Captioner.load(tmp_path / "captioner", spec, intra_op_threads=1)
    assert captioner.needs_tags == (strategy == "tags")

    ids = sorted(data.zh["test"])
    feats = np.stack([features[i] for i in ids]).astype(np.float32)
    tag_lists = trained.tag_lists(ids, feats) if strategy == "tags" else None
    tag_bag = trained.tag_matrix(ids, feats) if strategy == "tags" else None
    for beam in (1, 3):
        ours = captioner.generate(feats, n_best=beam, beam_size=beam, tags=tag_lists)
        theirs = decode(
            trained.model, trained.vocab, feats, tag_bag, beam_size=beam, n_best=beam, max_len=cfg.max_len
        )
        assert [[s.tokens for s in hyps] for hyps in ours] == [[t for t, _ in hyps] for hyps in theirs]
        for hyps, ref in zip(ours, theirs, strict=True):
            assert [s.log_prob for s in hyps] == pytest.approx([lp for _, lp in ref], abs=1e-3)
            assert all(s.text == "".join(s.tokens) for s in hyps)

    # beam_size 1 is plain greedy decoding, written out here independently of beam_search
    model = trained.model.eval()
    with torch.no_grad():
        h, c = model.init_state(
            torch.from_numpy(feats), None if tag_bag is None else torch.from_numpy(tag_bag)
        )
        token = torch.full((len(ids),), BOS_ID, dtype=torch.int64)
        words: list[list[int]] = [[] for _ in ids]
        finished = [False] * len(ids)
        for t in range(cfg.max_len + 1):
            logp, h, c = model.step(token, h, c)
            logp[:, [0, 1, BOS_ID]] = -math.inf
            if t == cfg.max_len:
                logp[:, [k for k in range(logp.shape[1]) if k != EOS_ID]] = -math.inf
            token = logp.argmax(dim=1)
            for row, tok in enumerate(token.tolist()):
                if not finished[row]:
                    finished[row] = tok == EOS_ID
                    if not finished[row]:
                        words[row].append(tok)
    greedy = captioner.generate(feats, beam_size=1, tags=tag_lists)
    assert [hyps[0].tokens for hyps in greedy] == [tuple(trained.vocab.decode(w)) for w in words]


def test_captioner_rejects_bad_input(tiny_split, tmp_path: Path) -> None:
    from xlsearch_training.captioning.config import CaptionerConfig
    from xlsearch_training.captioning.export import write_captioner
    from xlsearch_training.captioning.model import ShowAndTell
    from xlsearch_training.captioning.train import Trained

    _, _, input_feature = tiny_split
    vocab = build_caption_vocab([["一只", "青蛙"]])
    model = ShowAndTell(input_feature["dim"], len(vocab), 0, 8, 8, 0.0)
    cfg = CaptionerConfig.from_dict(TINY)
    write_captioner(
        Trained("monolingual", model, vocab, "zh", None, 0.0, []), tmp_path, cfg, input_feature, []
    )
    captioner = Captioner.load(tmp_path, json.loads((tmp_path / "component.json").read_text("utf-8")))
    dim = input_feature["dim"]
    good = np.zeros((2, dim), dtype=np.float32)
    assert len(captioner.generate(good, n_best=2, beam_size=2)[1]) == 2
    assert captioner.generate(np.zeros((0, dim), dtype=np.float32)) == []
    bad_calls = [
        {"features": np.zeros((2, dim + 1))},
        {"features": np.zeros(dim)},
        {"features": np.full((1, dim), np.nan)},
        {"features": good, "tags": [["青蛙"], ["猫"]]},
        {"features": good, "beam_size": 0},
        {"features": good, "beam_size": 2, "n_best": 3},
        {"features": good, "max_len": 0},
        {"features": good, "no_repeat_ngram": -1},
    ]
    for kwargs in bad_calls:
        with pytest.raises(CaptionInputError):
            captioner.generate(**kwargs)
    with pytest.raises(ValueError):
        CaptionerConfig.from_dict({"hiden": 3})


def test_experiment_cli_end_to_end(tiny_run, tmp_path: Path) -> None:
    from xlsearch.bundle.runtime import Bundle
    from xlsearch_training.captioning.cli import main

    config = tmp_path / "captioning.json"
    config.write_text(json.dumps(TINY))
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_run.runs / "bundle", bundle)
    runs = tmp_path / "runs"
    argv = [
        "--data", str(tiny_run.data), "--retrieval-runs", str(tiny_run.runs), "--runs", str(runs),
        "--retrieval-config", str(REPO / "tests" / "fixtures" / "tiny_config.json"), "--config", str(config),
        "--seeds", "0", "--gallery", "4", "--bundle", str(bundle), "--corpus-a", "tuxpaint",
    ]  # fmt: skip
    assert main(argv) == 0
    table = (runs / "captioning.md").read_text("utf-8")
    for label in ("Monolingual", "Transfer", "Sequential", "with tags", "NN sentence recommendation"):
        assert label in table
    results = json.loads((runs / "results.json").read_text("utf-8"))
    assert {r["strategy"] for r in results} == {"monolingual", "transfer", "sequential", "tags", "nn"}
    assert all(0.0 <= r["test"]["CIDEr-D"] for r in results)
    page = (runs / "gallery" / "index.html").read_text("utf-8")
    assert page.count("<img") == 4 and "recommended 1" in page
    assert len(list((runs / "gallery" / "images").glob("*.png"))) == 4

    # The served captioner is attached to the bundle and loads from it.
    loaded = Bundle(bundle)
    spec = loaded.manifest.captioner
    assert spec["input_feature"]["dim"] == 1280 and spec["strategy"] != "tags"
    assert spec["onnx_parity"]["identical_sentences"] and spec["onnx_parity"]["images"] > 0
    captioner = Captioner.load(bundle / "captioner", spec, intra_op_threads=1)
    pool = json.loads((bundle / "captioner" / spec["sentence_pool"]).read_text("utf-8"))
    assert pool and captioner.sentence_pool == pool
    [[sentence]] = captioner.generate(np.full((1, 1280), 1 / math.sqrt(1280), dtype=np.float32))
    assert sentence.text == "".join(sentence.tokens)

    # Resumable: a second run reads every result instead of training again.
    stamp = (runs / "seed0" / "monolingual" / "result.json").stat().st_mtime_ns
    assert main([*argv[:-4], "--corpus-a", "tuxpaint", "--gallery", "0"]) == 0
    assert (runs / "seed0" / "monolingual" / "result.json").stat().st_mtime_ns == stamp


def test_training_is_reproducible() -> None:
    """Same seed, same weights and history, whatever ran before (the initial weights are seeded too)."""
    from xlsearch_training.captioning.config import CaptionerConfig
    from xlsearch_training.captioning.inputs import SplitData
    from xlsearch_training.captioning.train import train_strategy

    rng = np.random.default_rng(0)
    sentences = ["一只青蛙。", "一只红色的鸟。", "字母Ａ。", "一辆消防车。", "一只猫。", "一朵花。"]
    ids = [f"i{k}" for k in range(len(sentences))]
    features = {i: rng.normal(size=8).astype(np.float32) for i in ids}
    zh = {
        "train": {i: [s] for i, s in zip(ids[:4], sentences, strict=False)},
        "val": {ids[4]: [sentences[4]]},
    }
    data = SplitData(features, zh, {"train": {}, "val": {}})
    cfg = CaptionerConfig.from_dict({**TINY, "epochs": 2})
    first = train_strategy("monolingual", data, cfg, seed=3)
    torch.rand(5)  # disturb the global generator
    second = train_strategy("monolingual", data, cfg, seed=3)
    assert first.history == second.history
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
