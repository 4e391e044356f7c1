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
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from xlsearch.common.progress import progress as progress_bar
from xlsearch.encode.text import Vocab
from xlsearch_training.captioning.config import STRATEGIES, CaptionerConfig
from xlsearch_training.captioning.corpora import Sentences
from xlsearch_training.captioning.decode import Evaluator, decode, join_tokens
from xlsearch_training.captioning.inputs import SplitData
from xlsearch_training.captioning.model import ShowAndTell
from xlsearch_training.captioning.tags import TagInputs
from xlsearch_training.captioning.vocab import build_caption_vocab, encode_caption, segment_all


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
    for epoch in progress_bar(range(1, epochs + 1), desc=desc, unit="epoch", leave=False):
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
