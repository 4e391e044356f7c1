"""Training the Show-and-Tell captioner and its strategies (COCO-CN Sec. IV-C; Miyazaki & Shimizu Sec. 4-5).

- ``monolingual``: the Chinese sentences only.
- ``transfer``: a full English captioner first; only its image embedding W_im is kept, a fresh Chinese LSTM, word
  embedding, softmax and vocabulary are attached and trained on Chinese (the languages are never interleaved).
- ``sequential``: corpus A (a larger or noisier Chinese corpus) first with the joint vocabulary of A and B; the
  checkpoint with the best CIDEr-D on B's validation split continues on corpus B at ``sequential_lr``.
- ``tags``: the image vector concatenated with a bag-of-tags vector (true tags to train, predicted tags to test).

Every fit keeps the epoch with the best CIDEr-D (greedy decoding) on the validation split.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from xlsearch.bundle.captioner import beam_search
from xlsearch.encode.text import Vocab
from xlsearch.eval.caption_metrics import score_captions
from xlsearch_training.captioning.corpora import Sentences
from xlsearch_training.captioning.model import ShowAndTell
from xlsearch_training.captioning.tags import TagInputs
from xlsearch_training.captioning.vocab import (
    BOS_ID,
    EOS_ID,
    build_caption_vocab,
    encode_caption,
    segment_all,
)

STRATEGIES = ("monolingual", "transfer", "sequential", "tags")


@dataclass
class CaptionerConfig:
    word_dim: int = 512
    hidden: int = 512  # LSTM size (COCO-CN: 512)
    dropout: float = 0.5
    feature_scale: float = 1.0  # image vectors are multiplied by this before W_im
    min_count: int = 2  # words seen fewer times in the training sentences become <unk>
    max_len: int = 20  # words per training sentence and per generated sentence
    batch_size: int = 64
    epochs: int = 30
    lr: float = 5e-4  # Adam, decayed by lr_decay every decay_every epochs (COCO-CN)
    lr_decay: float = 0.8
    decay_every: int = 3
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    sequential_lr: float = 5e-5  # Sequential Learning, stage B
    sequential_epochs: int = 30
    beam_size: int = 3  # test-time decoding
    length_penalty: float = 1.0  # finished hypotheses rank by log-prob / length ** length_penalty
    stamps_root: str = (
        "/usr/share/tuxpaint/stamps"  # Tux Paint: corpus A (zh_TW descriptions) of Sequential Learning
    )
    tag_min_count: int = 2
    tag_predictor: str = "tagger"  # test-time tags: "tagger" (xlsearch_training.tagging) or "knn"
    tagger: dict[str, Any] = field(default_factory=dict)  # TaggerConfig overrides for the tagger
    tag_neighbours: int = 10
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    serve: str = "best"  # the strategy of the served captioner ("best": best val CIDEr-D without tag input)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaptionerConfig:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown captioner option(s): {', '.join(sorted(unknown))}")
        cfg = cls(**data)
        if cfg.tag_predictor not in ("tagger", "knn"):
            raise ValueError(f"tag_predictor must be 'tagger' or 'knn', got {cfg.tag_predictor!r}")
        bad = [s for s in cfg.strategies if s not in STRATEGIES]
        if bad:
            raise ValueError(f"unknown strategy {bad}; expected some of {', '.join(STRATEGIES)}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SplitData:
    """Everything one seeded split offers the strategies. Sentences are raw (segmented where needed)."""

    features: dict[str, np.ndarray]  # image id -> backbone vector
    zh: dict[str, Sentences]  # split -> image id -> Chinese sentences
    en: dict[str, Sentences]
    corpus_a: Sentences | None = None  # Sequential Learning corpus A (training images only)
    tags: TagInputs | None = None


@dataclass
class Trained:
    strategy: str
    model: ShowAndTell
    vocab: Vocab
    lang: str
    tag_inputs: TagInputs | None
    val_cider: float
    history: list[dict[str, Any]]

    def tag_matrix(self, ids: list[str], features: np.ndarray, true_tags: bool = False) -> np.ndarray | None:
        """Bag-of-tags rows for ``ids``: their true tags when ``true_tags`` (training), else predicted ones."""
        if self.tag_inputs is None:
            return None
        return self.tag_inputs.bag(self.tag_lists(ids, features, true_tags))

    def tag_lists(self, ids: list[str], features: np.ndarray, true_tags: bool = False) -> list[list[str]]:
        assert self.tag_inputs is not None
        if true_tags:
            return [self.tag_inputs.true_tags[i] for i in ids]
        return self.tag_inputs.predictor.predict(features)


def join_tokens(tokens: tuple[str, ...] | list[str], lang: str) -> str:
    return ("" if lang == "zh" else " ").join(tokens)


def torch_step(model: ShowAndTell) -> Callable:
    """The model's decoding step as a numpy function (for the shared beam search)."""

    def step(tokens: np.ndarray, h: np.ndarray, c: np.ndarray):
        with torch.no_grad():
            logp, h2, c2 = model.step(torch.from_numpy(tokens), torch.from_numpy(h), torch.from_numpy(c))
        return logp.numpy(), h2.numpy(), c2.numpy()

    return step


@torch.no_grad()
def decode(
    model: ShowAndTell,
    vocab: Vocab,
    features: np.ndarray,
    tags: np.ndarray | None = None,
    beam_size: int = 1,
    n_best: int = 1,
    max_len: int = 20,
    length_penalty: float = 1.0,
    no_repeat_ngram: int = 0,
    batch_size: int = 256,
) -> list[list[tuple[tuple[str, ...], float]]]:
    """PyTorch decoding through the same beam search the serving side runs: per image the n best (tokens, log-p)."""
    was_training = model.training
    model.eval()
    out: list = []
    try:
        for start in range(0, len(features), batch_size):
            f = torch.from_numpy(np.ascontiguousarray(features[start : start + batch_size], dtype=np.float32))
            t = None if tags is None else torch.from_numpy(tags[start : start + batch_size])
            h, c = model.init_state(f, t)
            results = beam_search(
                h.numpy(),
                c.numpy(),
                torch_step(model),
                bos=BOS_ID,
                eos=EOS_ID,
                beam_size=beam_size,
                n_best=n_best,
                max_len=max_len,
                no_repeat_ngram=no_repeat_ngram,
                length_penalty=length_penalty,
            )
            out.extend([[(tuple(vocab.decode(ids)), lp) for ids, lp in hyps] for hyps in results])
    finally:
        model.train(was_training)
    return out


class Evaluator:
    """CIDEr-D (and the other metrics) of a model's sentences for one split's images."""

    def __init__(self, refs: Sentences, features: dict[str, np.ndarray], lang: str) -> None:
        self.refs, self.lang = refs, lang
        self.ids = sorted(refs)
        self.features = np.stack([features[i] for i in self.ids]).astype(np.float32)

    def sentences(
        self,
        trained_model: ShowAndTell,
        vocab: Vocab,
        tags: np.ndarray | None,
        cfg: CaptionerConfig,
        beam_size: int = 1,
    ) -> dict[str, str]:
        decoded = decode(
            trained_model,
            vocab,
            self.features,
            tags,
            beam_size=beam_size,
            max_len=cfg.max_len,
            length_penalty=cfg.length_penalty,
        )
        return {
            i: join_tokens(hyps[0][0], self.lang) if hyps else ""
            for i, hyps in zip(self.ids, decoded, strict=True)
        }

    def scores(self, hyps: dict[str, str]) -> dict[str, float]:
        return score_captions(self.refs, hyps, self.lang)


def _batches(samples: list[tuple[int, list[int]]], batch_size: int, gen: torch.Generator):
    order = torch.randperm(len(samples), generator=gen).tolist()
    for start in range(0, len(order), batch_size):
        chunk = [samples[i] for i in order[start : start + batch_size]]
        width = max(len(ids) for _, ids in chunk) - 1
        inputs = torch.zeros(len(chunk), width, dtype=torch.int64)
        targets = torch.zeros(len(chunk), width, dtype=torch.int64)
        for row, (_, ids) in enumerate(chunk):
            inputs[row, : len(ids) - 1] = torch.tensor(ids[:-1])
            targets[row, : len(ids) - 1] = torch.tensor(ids[1:])
        yield [image for image, _ in chunk], inputs, targets


def fit(
    model: ShowAndTell,
    vocab: Vocab,
    train: Sentences,
    lang: str,
    data: SplitData,
    val: Evaluator,
    cfg: CaptionerConfig,
    *,
    lr: float,
    epochs: int,
    seed: int,
    tag_inputs: TagInputs | None = None,
    evaluate_initial: bool = False,
    desc: str = "fit",
) -> tuple[float, list[dict[str, Any]]]:
    """Cross-entropy training; ``model`` ends with the weights of the epoch with the best validation CIDEr-D.
    Returns (best CIDEr-D, per-epoch history)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    ids = sorted(train)
    tokens = segment_all([s for i in ids for s in train[i]], lang)
    owners = [i for i in ids for _ in train[i]]
    samples = [(k, encode_caption(t, vocab, cfg.max_len)) for k, t in enumerate(tokens) if t]
    image_ids = [owners[k] for k, _ in samples]
    features = torch.from_numpy(np.stack([data.features[i] for i in image_ids]).astype(np.float32))
    tags = None
    if tag_inputs is not None:
        tags = torch.from_numpy(tag_inputs.bag([tag_inputs.true_tags.get(i, []) for i in image_ids]))
    val_tags = tag_inputs.bag(tag_inputs.predictor.predict(val.features)) if tag_inputs is not None else None
    samples = [(row, ids_) for row, (_, ids_) in enumerate(samples)]

    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.decay_every, gamma=cfg.lr_decay)
    loss_fn = nn.CrossEntropyLoss(ignore_index=0)
    history: list[dict[str, Any]] = []
    best, best_state = -math.inf, None
    if evaluate_initial:
        best = val.scores(val.sentences(model, vocab, val_tags, cfg))["CIDEr-D"]
        best_state = copy.deepcopy(model.state_dict())
        history.append({"epoch": 0, "val_cider": best})
    for epoch in tqdm(range(1, epochs + 1), desc=desc, unit="epoch", leave=False):
        model.train()
        total, count = 0.0, 0
        for rows, inputs, targets in _batches(samples, cfg.batch_size, gen):
            idx = torch.tensor(rows)
            logits = model(features[idx], None if tags is None else tags[idx], inputs)
            loss = loss_fn(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
            opt.zero_grad()
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            total, count = total + loss.item() * len(rows), count + len(rows)
        sched.step()
        cider = val.scores(val.sentences(model, vocab, val_tags, cfg))["CIDEr-D"]
        history.append({"epoch": epoch, "loss": total / max(count, 1), "val_cider": cider})
        if cider > best:
            best, best_state = cider, copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return best, history


def _new_model(
    feature_dim: int, vocab: Vocab, cfg: CaptionerConfig, seed: int, tag_dim: int = 0
) -> ShowAndTell:
    torch.manual_seed(seed)  # the initial weights depend only on the seed, not on what ran before
    return ShowAndTell(
        feature_dim, len(vocab), tag_dim, cfg.word_dim, cfg.hidden, cfg.dropout, cfg.feature_scale
    )


def train_strategy(strategy: str, data: SplitData, cfg: CaptionerConfig, seed: int) -> Trained:
    """Train one strategy on one split; the returned model is the best-on-validation checkpoint."""
    feature_dim = len(next(iter(data.features.values())))
    zh_train, zh_val = data.zh["train"], data.zh["val"]
    val = Evaluator(zh_val, data.features, "zh")

    def zh_vocab(*corpora: Sentences) -> Vocab:
        sentences = [s for corpus in corpora for texts in corpus.values() for s in texts]
        return build_caption_vocab(segment_all(sentences, "zh"), cfg.min_count)

    if strategy == "monolingual":
        vocab = zh_vocab(zh_train)
        model = _new_model(feature_dim, vocab, cfg, seed)
        best, hist = fit(
            model, vocab, zh_train, "zh", data, val, cfg, lr=cfg.lr, epochs=cfg.epochs, seed=seed, desc="zh"
        )
        return Trained(strategy, model, vocab, "zh", None, best, hist)

    if strategy == "transfer":
        en_vocab = build_caption_vocab(
            segment_all([s for texts in data.en["train"].values() for s in texts], "en"), cfg.min_count
        )
        en_model = _new_model(feature_dim, en_vocab, cfg, seed)
        en_val = Evaluator(data.en["val"], data.features, "en")
        en_best, en_hist = fit(
            en_model,
            en_vocab,
            data.en["train"],
            "en",
            data,
            en_val,
            cfg,
            lr=cfg.lr,
            epochs=cfg.epochs,
            seed=seed,
            desc="en",
        )
        vocab = zh_vocab(zh_train)
        model = _new_model(feature_dim, vocab, cfg, seed)
        model.w_im.load_state_dict(en_model.w_im.state_dict())  # keep only W_im; the LSTM etc. are new
        best, hist = fit(
            model,
            vocab,
            zh_train,
            "zh",
            data,
            val,
            cfg,
            lr=cfg.lr,
            epochs=cfg.epochs,
            seed=seed,
            desc="en->zh",
        )
        history = [{"stage": "en", "best_val_cider_en": en_best, **h} for h in en_hist] + [
            {"stage": "zh", **h} for h in hist
        ]
        return Trained(strategy, model, vocab, "zh", None, best, history)

    if strategy == "sequential":
        if not data.corpus_a:
            raise ValueError(
                "Sequential Learning needs corpus A (e.g. the OpenCC-converted zh_TW descriptions)"
            )
        vocab = zh_vocab(data.corpus_a, zh_train)  # the joint vocabulary of A and B
        model = _new_model(feature_dim, vocab, cfg, seed)
        a_best, a_hist = fit(
            model,
            vocab,
            data.corpus_a,
            "zh",
            data,
            val,
            cfg,
            lr=cfg.lr,
            epochs=cfg.epochs,
            seed=seed,
            desc="A",
        )
        best, hist = fit(
            model,
            vocab,
            zh_train,
            "zh",
            data,
            val,
            cfg,
            lr=cfg.sequential_lr,
            epochs=cfg.sequential_epochs,
            seed=seed,
            evaluate_initial=True,
            desc="A->B",
        )
        history = [{"stage": "A", **h} for h in a_hist] + [{"stage": "B", **h} for h in hist]
        return Trained(strategy, model, vocab, "zh", None, best, history)

    if strategy == "tags":
        if data.tags is None:
            raise ValueError("captioning with tags needs tag inputs")
        vocab = zh_vocab(zh_train)
        model = _new_model(feature_dim, vocab, cfg, seed, tag_dim=len(data.tags.vocab))
        best, hist = fit(
            model,
            vocab,
            zh_train,
            "zh",
            data,
            val,
            cfg,
            lr=cfg.lr,
            epochs=cfg.epochs,
            seed=seed,
            tag_inputs=data.tags,
            desc="zh+tags",
        )
        return Trained(strategy, model, vocab, "zh", data.tags, best, hist)

    raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")


def generate_for(
    trained: Trained,
    ids: list[str],
    features: dict[str, np.ndarray],
    cfg: CaptionerConfig,
    beam_size: int | None = None,
) -> dict[str, str]:
    """The best sentence for each image (beam ``cfg.beam_size``; predicted tags for the tag strategy)."""
    feats = np.stack([features[i] for i in ids]).astype(np.float32)
    tags = trained.tag_matrix(ids, feats) if trained.tag_inputs is not None else None
    decoded = decode(
        trained.model,
        trained.vocab,
        feats,
        tags,
        beam_size=beam_size or cfg.beam_size,
        max_len=cfg.max_len,
        length_penalty=cfg.length_penalty,
    )
    return {i: join_tokens(h[0][0], trained.lang) if h else "" for i, h in zip(ids, decoded, strict=True)}
