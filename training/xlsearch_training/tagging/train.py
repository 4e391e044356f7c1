"""Training of the taggers and the label-quantity regressor on a manifest's splits (train: fit, val: pick the epoch).

``fit_tagger`` trains one model ("mlp" = zh-only MLP, "multitask", "cascade") plus the count regressor
(hyper-parameters: ``config.TaggerConfig``); ``evaluate.evaluate_modes`` measures it and
``train_tagger_component`` (in ``component.py``) wraps it into a servable component folder.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlsearch.common.progress import progress as progress_bar
from xlsearch.data.manifest import Manifest
from xlsearch.encode.tag_vocab import (
    ImageTags,
    TagVocabConfig,
    TagVocabulary,
    build_vocabularies,
    extract_image_tags,
)
from xlsearch.eval.tag_metrics import evaluate_tagging, mean_average_precision
from xlsearch_training.tagging.config import TaggerConfig
from xlsearch_training.tagging.data import TagData, tag_data
from xlsearch_training.tagging.models import CountRegressor, MultiTaskMLP, ServedTagger, TagMLP


def _fit(
    module: nn.Module,
    n: int,
    loss_fn: Callable[[Tensor], Tensor],
    epochs: int,
    lr: float,
    cfg: TaggerConfig,
    seed: int,
    val_score: Callable[[], float] | None,
    desc: str,
) -> dict[str, Any]:
    """Adam on shuffled mini-batches; keeps the weights of the epoch with the best ``val_score`` (higher is better)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    best: tuple[float, int, dict[str, Tensor] | None] = (-math.inf, -1, None)
    for epoch in progress_bar(range(epochs), desc=desc, unit="epoch", disable=not cfg.progress, leave=False):
        module.train()
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.batch_size):
            loss = loss_fn(perm[start : start + cfg.batch_size])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if val_score is not None and cfg.select_on_val:
            module.eval()
            with torch.no_grad():
                score = val_score()
            if score > best[0]:
                best = (score, epoch, copy.deepcopy(module.state_dict()))
    module.eval()
    if best[2] is not None:
        module.load_state_dict(best[2])
        return {"best_epoch": best[1], "best_val": best[0]}
    return {"best_epoch": epochs - 1, "best_val": None}


def _val_score(scores: Tensor, truth: np.ndarray, metric: str) -> float:
    """Validation score of tag probabilities on the images that carry a tag: F@5, or the mean (over images) average
    precision of the ranking, which ties far less often than F@5 on a small validation split."""
    keep = truth.sum(axis=1) > 0
    if not keep.any():
        return 0.0
    if metric == "f@5":
        return evaluate_tagging(scores.numpy()[keep], truth[keep], 5)["f"]
    return mean_average_precision(scores.numpy()[keep], truth[keep])


def _user_dropin(y: Tensor, keep: float, none: float, gen: torch.Generator) -> Tensor:
    """Random subsets of the true tags as simulated user tags (all-zero rows for a ``none`` share of samples)."""
    given = (torch.rand(y.shape, generator=gen) < keep).float() * y
    empty = torch.rand(y.shape[0], 1, generator=gen) < none
    return torch.where(empty, torch.zeros_like(given), given)


@dataclass
class TrainedTagger:
    model: ServedTagger
    zh_vocab: TagVocabulary
    en_vocab: TagVocabulary
    config: TaggerConfig
    mean_count: float  # mean number of zh tags of the tagged training images (the fixed-k baseline)
    log: dict[str, Any]

    @torch.no_grad()
    def scores(self, x: np.ndarray, user: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(zh probabilities [N, Cz], predicted counts [N]) without user tags unless given."""
        self.model.eval()
        feat = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if self.config.user_tags and user is None:
            user = np.zeros((len(x), len(self.zh_vocab)), np.float32)
        out = self.model(feat, None if user is None else torch.from_numpy(user.astype(np.float32)))
        return out[0].numpy(), out[-1].numpy()


def fit_tagger(
    manifest: Manifest,
    features: dict[str, np.ndarray],
    config: TaggerConfig,
    seed: int,
    tags: ImageTags | None = None,
    extra_english: dict[str, list[str]] | None = None,
) -> TrainedTagger:
    """Vocabularies from the training split, then the model of ``config.model`` and the count regressor.

    ``extra_english``: {feature id: English tags} of images with English text but no Chinese, added to the cascade's
    first stage when ``config.english_only_images`` (ignored by the other models)."""
    torch.manual_seed(seed)  # weight initialisation
    tags = tags or extract_image_tags(manifest.records)
    train_recs = [r for r in manifest.split("train") if r.id in features]
    zh_vocab, en_vocab = build_vocabularies(train_recs, TagVocabConfig.from_dict(config.vocab), tags)
    if len(zh_vocab) == 0:
        raise ValueError("no Chinese tag reaches the vocabulary's min-count in the training split")
    train = tag_data(train_recs, features, tags, zh_vocab, en_vocab)
    val = tag_data(manifest.split("val"), features, tags, zh_vocab, en_vocab)
    zh_train = train.subset(train.zh_tagged)
    dim = train.x.shape[1]
    scale = config.input_scale if config.input_scale is not None else math.sqrt(dim)
    cz, ce = len(zh_vocab), len(en_vocab)
    user_dim = cz if config.user_tags else 0
    gen = torch.Generator().manual_seed(seed + 1)
    log: dict[str, Any] = {"train_images": len(zh_train.ids), "zh_tags": cz, "en_tags": ce}

    x_zh = torch.from_numpy(zh_train.x) * scale
    y_zh = torch.from_numpy(zh_train.zh)
    x_val = torch.from_numpy(val.x) * scale if len(val.ids) else torch.zeros(0, dim)

    def user_for(idx: Tensor) -> list[Tensor]:
        return [_user_dropin(y_zh[idx], config.user_tag_keep, config.user_tag_none, gen)] if user_dim else []

    def val_user() -> list[Tensor]:
        return [torch.zeros(len(val.ids), cz)] if user_dim else []

    en_stage: TagMLP | None = None
    if config.model == "mlp":
        zh_net: nn.Module = TagMLP(dim + user_dim, cz, config.hidden, config.dropout)
        log["zh"] = _fit(
            zh_net,
            len(zh_train.ids),
            lambda i: F.binary_cross_entropy_with_logits(
                zh_net(torch.cat([x_zh[i], *user_for(i)], 1)), y_zh[i]
            ),
            config.epochs,
            config.lr,
            config,
            seed,
            lambda: _val_score(
                torch.sigmoid(zh_net(torch.cat([x_val, *val_user()], 1))), val.zh, config.select_metric
            ),
            "zh mlp",
        )
    elif config.model == "multitask":
        zh_net = MultiTaskMLP(dim + user_dim, ce, cz, config.hidden, config.dropout)
        y_en = torch.from_numpy(zh_train.en)

        def mt_loss(i: Tensor) -> Tensor:
            en_logits, zh_logits = zh_net(torch.cat([x_zh[i], *user_for(i)], 1))
            return F.binary_cross_entropy_with_logits(
                en_logits, y_en[i]
            ) + F.binary_cross_entropy_with_logits(zh_logits, y_zh[i])

        log["zh"] = _fit(
            zh_net,
            len(zh_train.ids),
            mt_loss,
            config.epochs,
            config.lr,
            config,
            seed,
            lambda: _val_score(
                torch.sigmoid(zh_net(torch.cat([x_val, *val_user()], 1))[1]), val.zh, config.select_metric
            ),
            "multitask",
        )
    else:
        extra = extra_english if config.english_only_images else None
        en_x, en_y = _english_training_set(train, features, extra, en_vocab)
        log["en_train_images"] = len(en_x)
        en_stage, log["en"] = _train_english(en_x, en_y, val, scale, config, seed)
        if config.cascade_oof_folds > 1:
            p_train = _out_of_fold_probs(en_x, en_y, zh_train, train, scale, config, seed)
        else:
            with torch.no_grad():
                p_train = torch.sigmoid(en_stage(x_zh))
        with torch.no_grad():
            p_val = torch.sigmoid(en_stage(x_val))
        zh_net = TagMLP(dim + ce + user_dim, cz, config.hidden, config.dropout)
        log["zh"] = _fit(
            zh_net,
            len(zh_train.ids),
            lambda i: F.binary_cross_entropy_with_logits(
                zh_net(torch.cat([x_zh[i], p_train[i], *user_for(i)], 1)), y_zh[i]
            ),
            config.epochs,
            config.lr,
            config,
            seed,
            lambda: _val_score(
                torch.sigmoid(zh_net(torch.cat([x_val, p_val, *val_user()], 1))), val.zh, config.select_metric
            ),
            "cascade zh",
        )

    counter, log["count"] = _train_counter(zh_train, val, scale, config, seed)
    model = ServedTagger(config.model, scale, zh_net, counter, en_stage, config.user_tags).eval()
    mean_count = float(zh_train.zh.sum(axis=1).mean())
    return TrainedTagger(model, zh_vocab, en_vocab, config, mean_count, log)


def _english_training_set(
    train: TagData,
    features: dict[str, np.ndarray],
    extra_english: dict[str, list[str]] | None,
    en_vocab: TagVocabulary,
) -> tuple[np.ndarray, np.ndarray]:
    """Every training image with an English tag, plus the English-only extra images."""
    data = train.subset(train.en_tagged)
    x, y = [data.x], [data.en]
    if extra_english:
        ids = [i for i in sorted(extra_english) if i in features]
        ex_y = en_vocab.multi_hot([extra_english[i] for i in ids])
        keep = ex_y.sum(axis=1) > 0
        if keep.any():
            x.append(np.stack([features[i] for i in ids]).astype(np.float32)[keep])
            y.append(ex_y[keep])
    return np.concatenate(x), np.concatenate(y)


def _train_english(
    en_x: np.ndarray, en_y: np.ndarray, val: TagData, scale: float, config: TaggerConfig, seed: int
) -> tuple[TagMLP, dict[str, Any]]:
    net = TagMLP(en_x.shape[1], en_y.shape[1], config.hidden, config.dropout)
    x, y = torch.from_numpy(en_x) * scale, torch.from_numpy(en_y)
    x_val = torch.from_numpy(val.x) * scale
    log = _fit(
        net,
        len(x),
        lambda i: F.binary_cross_entropy_with_logits(net(x[i]), y[i]),
        config.epochs,
        config.lr,
        config,
        seed,
        (lambda: _val_score(torch.sigmoid(net(x_val)), val.en, config.select_metric))
        if len(val.ids)
        else None,
        "cascade en",
    )
    return net, log


def _out_of_fold_probs(
    en_x: np.ndarray,
    en_y: np.ndarray,
    zh_train: TagData,
    train: TagData,
    scale: float,
    config: TaggerConfig,
    seed: int,
) -> Tensor:
    """First-stage probabilities of the zh training images, each from a first stage that did not see it (so the
    second stage learns from probabilities as noisy as those it gets at test time)."""
    # Rows of en_x that belong to the split's training images come first and in train order (see
    # _english_training_set); map zh training images onto them.
    en_ids = [i for i, m in zip(train.ids, train.en_tagged, strict=True) if m]
    row = {image_id: n for n, image_id in enumerate(en_ids)}
    folds = np.random.default_rng(seed).integers(0, config.cascade_oof_folds, size=len(en_x))
    empty = TagData(
        [], np.zeros((0, en_x.shape[1]), np.float32), np.zeros((0, 0)), np.zeros((0, en_y.shape[1]))
    )
    fold_cfg = dataclasses.replace(config, select_on_val=False)
    out = torch.zeros(len(zh_train.ids), en_y.shape[1])
    x_zh = torch.from_numpy(zh_train.x) * scale
    for fold in range(config.cascade_oof_folds):
        held = folds == fold
        net, _ = _train_english(en_x[~held], en_y[~held], empty, scale, fold_cfg, seed + 100 + fold)
        with torch.no_grad():
            probs = torch.sigmoid(net(x_zh))
        for n, image_id in enumerate(zh_train.ids):
            if (image_id in row and held[row[image_id]]) or (image_id not in row and fold == 0):
                out[n] = probs[n]
    return out


def _train_counter(
    zh_train: TagData, val: TagData, scale: float, config: TaggerConfig, seed: int
) -> tuple[CountRegressor, dict[str, Any]]:
    net = CountRegressor(zh_train.x.shape[1], config.lqp_hidden, config.lqp_dropout)
    x = torch.from_numpy(zh_train.x) * scale
    y = torch.from_numpy(zh_train.zh.sum(axis=1))
    val_t = val.subset(val.zh_tagged)
    x_val, y_val = torch.from_numpy(val_t.x) * scale, torch.from_numpy(val_t.zh.sum(axis=1))
    log = _fit(
        net,
        len(x),
        lambda i: F.mse_loss(net(x[i]), y[i]),
        config.lqp_epochs,
        config.lqp_lr,
        config,
        seed,
        (lambda: -float(F.mse_loss(net(x_val), y_val))) if len(val_t.ids) else None,
        "count",
    )
    return net, log
