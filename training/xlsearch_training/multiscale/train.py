"""Training Niu et al.'s tagger in the order of their Algorithm 1, on the frozen backbone's cached multi-scale
vectors (hyper-parameters: ``MultiScaleConfig``):

1. the "basic CNN": the trainable top + a classifier on the final feature (BCE, Eq. 4);
2-3. (multi-scale) the fusion blocks start as the identity on the final feature (so the MS-CNN starts as step 1's
   CNN) and are trained with the classifier, the top fixed;
4. (textual) the textual MLP on simulated user tags (BCE through its own classifier), apart from the visual model;
5. visual and textual models fixed: the multi-class classifier on [f_v ; f_t] (BCE) and the label quantity
   regressor on the same vector (MSE, Eq. 5), separately.

Every stage keeps the epoch with the best validation score (mAP; the regressor: lowest MSE).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlsearch.data.manifest import Manifest
from xlsearch.encode.tag_vocab import (
    ImageTags,
    TagVocabConfig,
    TagVocabulary,
    build_vocabularies,
    extract_image_tags,
)
from xlsearch.eval.tag_metrics import mean_average_precision
from xlsearch_training.multiscale.config import MultiScaleConfig
from xlsearch_training.multiscale.model import MultiScaleTagger, TextualModel, VisualModel
from xlsearch_training.srnn.evaluate import simulated_user_tags
from xlsearch_training.srnn.fit import fit_stage
from xlsearch_training.srnn.tag_train import VAL_USER_SEED, _user_dropin
from xlsearch_training.tagging.data import tag_data
from xlsearch_training.tagging.models import CountRegressor


@dataclass
class TrainedMultiScale:
    model: MultiScaleTagger
    zh_vocab: TagVocabulary
    en_vocab: TagVocabulary
    config: MultiScaleConfig
    log: dict[str, Any]

    @torch.no_grad()
    def scores(self, x: np.ndarray, user: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(zh probabilities [N,C], predicted counts [N]) — no user tags unless given."""
        self.model.eval()
        f = torch.from_numpy(np.ascontiguousarray(x[:, : self.model.visual.in_dim], dtype=np.float32))
        u = torch.from_numpy(user.astype(np.float32)) if user is not None and self.model.user_tags else None
        probs, counts = self.model(f, u)
        return probs.numpy(), counts.numpy()


def fit_multiscale(
    manifest: Manifest,
    features: dict[str, np.ndarray],
    config: MultiScaleConfig,
    seed: int,
    dim: int,
    stage_dims: list[int],
    tags: ImageTags | None = None,
) -> TrainedMultiScale:
    """``features``: [final feature (dim) ; stages (stage_dims)] per image id (``multiscale.features``)."""
    torch.manual_seed(seed)
    tags = tags or extract_image_tags(manifest.records)
    train_recs = [r for r in manifest.split("train") if r.id in features]
    zh_vocab, en_vocab = build_vocabularies(train_recs, TagVocabConfig.from_dict(config.vocab), tags)
    train = tag_data(train_recs, features, tags, zh_vocab, en_vocab)
    train = train.subset(train.zh_tagged)
    val = tag_data(manifest.split("val"), features, tags, zh_vocab, en_vocab)
    val = val.subset(val.zh_tagged)
    n_labels, n = len(zh_vocab), len(train.ids)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.zh)
    vx = torch.from_numpy(val.x)
    visual = VisualModel(dim, stage_dims, config.hidden, config.dropout, config.multi_scale)
    common = dict(batch_size=config.batch_size, weight_decay=config.weight_decay, progress=config.progress)
    gen = torch.Generator().manual_seed(seed + 1)
    log: dict[str, Any] = {"train_images": n, "zh_tags": n_labels, "en_tags": len(en_vocab)}

    if not len(val.ids):  # no validation image: every stage keeps its last epoch
        vx = torch.zeros(0, x.shape[1])

    def on_val(fn):
        return fn if len(val.ids) else None

    def val_map(logits: Tensor) -> float:
        return mean_average_precision(torch.sigmoid(logits).numpy(), val.zh) if len(val.ids) else 0.0

    def bce(logits: Tensor, i: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits, y[i])

    # 1. the basic CNN on the final feature
    cls_v = nn.Linear(config.hidden, n_labels)
    cnn = nn.ModuleList([visual.top, cls_v])

    def top_only(v: Tensor) -> Tensor:
        return visual.top(v[:, :dim] * dim**0.5)

    log["cnn"] = fit_stage(
        cnn.parameters(), cnn, n, lambda i: bce(cls_v(top_only(x[i])), i),
        epochs=config.cnn_epochs, lr=config.cnn_lr, seed=seed, desc="cnn",
        val_score=on_val(lambda: val_map(cls_v(top_only(vx)))), **common,
    )  # fmt: skip
    visual.top.eval()
    # 2-3. the fusion blocks, the top fixed
    if visual.fusion is not None:
        for p in visual.top.parameters():
            p.requires_grad_(False)
        ms = nn.ModuleList([visual.fusion, cls_v])
        log["fusion"] = fit_stage(
            ms.parameters(), ms, n, lambda i: bce(cls_v(visual(x[i])), i),
            epochs=config.fusion_epochs, lr=config.fusion_lr, seed=seed + 2, desc="fusion",
            val_score=on_val(lambda: val_map(cls_v(visual(vx)))), **common,
        )  # fmt: skip
    visual.eval()
    for p in visual.parameters():
        p.requires_grad_(False)
    # 4. the textual MLP on simulated user tags
    textual = None
    val_user = simulated_user_tags(val.zh, config.user_tag_keep, VAL_USER_SEED) if config.textual else None

    def user_for(i: Tensor) -> Tensor:
        return _user_dropin(y[i], config.user_tag_keep, config.user_tag_none, gen)

    if config.textual:
        textual = TextualModel(n_labels, config.text_hidden or config.hidden, config.dropout)
        cls_t = nn.Linear(config.text_hidden or config.hidden, n_labels)
        text = nn.ModuleList([textual, cls_t])
        vu = torch.from_numpy(val_user)
        log["textual"] = fit_stage(
            text.parameters(), text, n, lambda i: bce(cls_t(textual(user_for(i))), i),
            epochs=config.text_epochs, lr=config.text_lr, seed=seed + 3, desc="textual",
            val_score=on_val(lambda: val_map(cls_t(textual(vu)))), **common,
        )  # fmt: skip
        textual.eval()
        for p in textual.parameters():
            p.requires_grad_(False)
    # 5. the classifier and the label quantity regressor on the fixed joint vector
    with torch.no_grad():
        fv, vfv = visual(x), visual(vx)
        vf = torch.cat([vfv, textual(torch.from_numpy(val_user))], 1) if textual is not None else vfv

    def joint(i: Tensor) -> Tensor:
        if textual is None:
            return fv[i]
        with torch.no_grad():
            return torch.cat([fv[i], textual(user_for(i))], 1)

    width = vf.shape[1]
    classifier = nn.Linear(width, n_labels)
    log["classifier"] = fit_stage(
        classifier.parameters(), classifier, n, lambda i: bce(classifier(joint(i)), i),
        epochs=config.classifier_epochs, lr=config.classifier_lr, seed=seed + 4, desc="classifier",
        val_score=on_val(lambda: val_map(classifier(vf))), **common,
    )  # fmt: skip
    count = CountRegressor(width, config.lqp_hidden, config.lqp_dropout)
    yc, vyc = y.sum(dim=1), torch.from_numpy(val.zh.sum(axis=1))
    log["count"] = fit_stage(
        count.parameters(), count, n, lambda i: F.mse_loss(count(joint(i)), yc[i]),
        epochs=config.lqp_epochs, lr=config.lqp_lr, seed=seed + 5, desc="count",
        val_score=(lambda: -float(F.mse_loss(count(vf), vyc))) if len(val.ids) else None, **common,
    )  # fmt: skip
    model = MultiScaleTagger(visual, classifier, count, textual).eval()
    return TrainedMultiScale(model, zh_vocab, en_vocab, config, log)
