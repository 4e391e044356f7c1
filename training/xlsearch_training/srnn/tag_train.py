"""Training the S-CNN-RNN tagger in the order of Liu et al. Sec. 3.3 (hyper-parameters: ``SRNNTaggerConfig``).

1. In parallel (independent of each other):
   a. the concept model (unary), BCE against the ground-truth concepts (Eq. 5); with user tags, the user-tag MLP
      alone, then both with their logits summed (Sec. 4.1); the epoch with the best validation mAP is kept;
   b. the LSTM (relational), fed the ground-truth concept vector s, on the label sequences; lowest validation NLL.
2. Joint fine-tuning with L = L_u + L_r, the LSTM fed s^ (gradients of L_r reach the concept layer); the epoch with
   the best validation H-F1 of greedy decoding is kept.

Without deep supervision (NIC-F) there is nothing to pretrain: stage 2 alone (L_r only), for the epochs of 1b + 2.
With the feature layer as the interface but deep supervision (NIC-deeply): 1a, then 2 (1b needs concepts as input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from xlsearch.bundle.sequence_tagger import greedy_labels
from xlsearch.data.manifest import Manifest
from xlsearch.encode.tag_vocab import (
    ImageTags,
    TagVocabConfig,
    TagVocabulary,
    build_vocabularies,
    extract_image_tags,
)
from xlsearch.eval.tag_metrics import mean_average_precision
from xlsearch_training.srnn.config import SRNNTaggerConfig
from xlsearch_training.srnn.evaluate import set_metrics, simulated_user_tags
from xlsearch_training.srnn.fit import fit_stage
from xlsearch_training.srnn.losses import concept_loss, joint_loss, sequence_loss
from xlsearch_training.srnn.model import SCNNRNN, ConceptModel, Decoder
from xlsearch_training.srnn.sequences import label_ranks, label_sequences, pad_sequences, start_token, trim
from xlsearch_training.tagging.data import tag_data

VAL_USER_SEED = 11  # the fixed simulated user tags of the validation images (models with user tags)


def torch_step(model: SCNNRNN):
    """The model's decoding step as a numpy function (for the shared greedy / beam search)."""

    def step(tokens: np.ndarray, h: np.ndarray, c: np.ndarray):
        with torch.no_grad():
            logp, h2, c2 = model.step(torch.from_numpy(tokens), torch.from_numpy(h), torch.from_numpy(c))
        return logp.numpy(), h2.numpy(), c2.numpy()

    return step


@dataclass
class TrainedSequenceTagger:
    model: SCNNRNN
    zh_vocab: TagVocabulary
    en_vocab: TagVocabulary
    config: SRNNTaggerConfig
    ranks: np.ndarray  # each label's position in the training sequences' order
    log: dict[str, Any]

    @property
    def has_scores(self) -> bool:
        """True when the concept head is supervised (its probabilities are the served tag scores)."""
        return self.config.deep_supervision

    @torch.no_grad()
    def decode(
        self, x: np.ndarray, k: int | None = None, user: np.ndarray | None = None
    ) -> tuple[list[list[tuple[int, float]]], np.ndarray | None]:
        """(greedy label sequences, concept probabilities or None) — what the served component computes."""
        self.model.eval()
        f = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        u = None
        if self.config.user_tags:
            u = (
                torch.from_numpy(user.astype(np.float32))
                if user is not None
                else torch.zeros(len(x), len(self.zh_vocab))
            )
        if len(x) == 0:
            return [], None
        interface, logits = self.model.encode(f, u)
        h, c = self.model.decoder.init_state(interface)
        seqs = greedy_labels(
            h.numpy(), c.numpy(), torch_step(self.model), n_labels=len(self.zh_vocab),
            max_labels=self.config.max_labels, k=k,
        )  # fmt: skip
        return seqs, torch.sigmoid(logits).numpy() if self.has_scores else None


def _user_dropin(y: Tensor, keep: float, none: float, gen: torch.Generator) -> Tensor:
    """Random subsets of the true tags as simulated user tags (all-zero rows for a ``none`` share of samples)."""
    given = (torch.rand(y.shape, generator=gen) < keep).float() * y
    empty = torch.rand(y.shape[0], 1, generator=gen) < none
    return torch.where(empty, torch.zeros_like(given), given)


def fit_sequence_tagger(
    manifest: Manifest,
    features: dict[str, np.ndarray],
    config: SRNNTaggerConfig,
    seed: int,
    tags: ImageTags | None = None,
) -> TrainedSequenceTagger:
    """Vocabularies from the training split, then the stages above on its tagged images (val picks the epochs)."""
    torch.manual_seed(seed)
    tags = tags or extract_image_tags(manifest.records)
    train_recs = [r for r in manifest.split("train") if r.id in features]
    zh_vocab, en_vocab = build_vocabularies(train_recs, TagVocabConfig.from_dict(config.vocab), tags)
    if len(zh_vocab) == 0:
        raise ValueError("no Chinese tag reaches the vocabulary's min-count in the training split")
    train = tag_data(train_recs, features, tags, zh_vocab, en_vocab)
    train = train.subset(train.zh_tagged)
    val = tag_data(manifest.split("val"), features, tags, zh_vocab, en_vocab)
    val = val.subset(val.zh_tagged)
    n_labels, dim = len(zh_vocab), train.x.shape[1]
    scale = config.input_scale if config.input_scale is not None else math.sqrt(dim)
    ranks = label_ranks(zh_vocab, config.order)
    inputs, targets = pad_sequences(label_sequences(train.zh, ranks), start_token(n_labels))
    concept = ConceptModel(
        dim,
        n_labels,
        config.hidden,
        config.dropout,
        scale,
        n_labels if config.user_tags else 0,
        config.user_hidden,
    )
    interface_dim = n_labels if config.interface == "concepts" else config.hidden
    decoder = Decoder(
        interface_dim, n_labels + 1, n_labels + 2, config.word_dim, config.lstm, config.lstm_dropout
    )
    model = SCNNRNN(concept, decoder, config.interface)
    trained = TrainedSequenceTagger(model, zh_vocab, en_vocab, config, ranks, {})
    x, s = torch.from_numpy(train.x), torch.from_numpy(train.zh)
    inp, tgt = torch.from_numpy(inputs), torch.from_numpy(targets)
    gen = torch.Generator().manual_seed(seed + 1)
    val_user = simulated_user_tags(val.zh, config.user_tag_keep, VAL_USER_SEED) if config.user_tags else None
    val_x, val_s = torch.from_numpy(val.x), torch.from_numpy(val.zh)
    n = len(train.ids)
    common = dict(batch_size=config.batch_size, weight_decay=config.weight_decay, progress=config.progress)
    log: dict[str, Any] = {
        "train_images": n,
        "zh_tags": n_labels,
        "en_tags": len(en_vocab),
        "order": config.order,
    }

    def batch(i: Tensor) -> tuple[Tensor, Tensor]:
        return trim(inp[i], tgt[i], -100)

    def rnn_loss(i: Tensor) -> Tensor:
        inputs_i, targets_i = batch(i)
        return sequence_loss(decoder(s[i], inputs_i), targets_i)

    def on_val(fn):  # no validation image: every stage keeps its last epoch
        return fn if len(val.ids) else None

    def user_for(idx: Tensor) -> Tensor | None:
        return (
            _user_dropin(s[idx], config.user_tag_keep, config.user_tag_none, gen)
            if config.user_tags
            else None
        )

    def val_map(logits: Tensor) -> float:
        return mean_average_precision(torch.sigmoid(logits).numpy(), val.zh) if len(val.ids) else 0.0

    def concepts_val() -> float:
        u = torch.from_numpy(val_user) if val_user is not None else None
        return val_map(concept(val_x, u)[1])

    if config.deep_supervision:
        image_params = [*concept.features.parameters(), *concept.head.parameters()]

        def image_logits(i: Tensor) -> Tensor:
            return concept.head(concept.features(x[i] * concept.input_scale))

        log["concepts"] = fit_stage(
            image_params, model, n, lambda i: concept_loss(image_logits(i), s[i]),
            epochs=config.concept_epochs, lr=config.concept_lr, seed=seed, desc="concepts",
            val_score=on_val(lambda: val_map(concept.head(concept.features(val_x * concept.input_scale)))), **common,
        )  # fmt: skip
        if concept.user is not None:
            user_net = concept.user
            log["user_mlp"] = fit_stage(
                user_net.parameters(), model, n, lambda i: concept_loss(user_net(user_for(i)), s[i]),
                epochs=config.concept_epochs, lr=config.concept_lr, seed=seed + 2, desc="user tags",
                val_score=on_val(lambda: val_map(user_net(torch.from_numpy(val_user)))), **common,
            )  # fmt: skip
            log["concepts_with_user"] = fit_stage(
                concept.parameters(), model, n, lambda i: concept_loss(concept(x[i], user_for(i))[1], s[i]),
                epochs=max(1, config.concept_epochs // 2), lr=config.concept_lr, seed=seed + 3,
                desc="concepts+user", val_score=on_val(concepts_val), **common,
            )  # fmt: skip
    pretrained_rnn = config.interface == "concepts" and config.deep_supervision
    if pretrained_rnn:

        def val_nll() -> float:
            vi, vt = pad_sequences(label_sequences(val.zh, ranks), start_token(n_labels))
            return -float(sequence_loss(decoder(val_s, torch.from_numpy(vi)), torch.from_numpy(vt)))

        log["rnn"] = fit_stage(
            decoder.parameters(), model, n, rnn_loss,
            epochs=config.rnn_epochs, lr=config.rnn_lr, seed=seed + 4, desc="lstm",
            val_score=val_nll if len(val.ids) else None, **common,
        )  # fmt: skip

    def val_h_f1() -> float:
        if not len(val.ids):
            return 0.0
        seqs, _ = trained.decode(val.x, user=val_user)
        return set_metrics(seqs, val.zh > 0)["h_f1"]

    weight = config.concept_weight if config.deep_supervision else 0.0
    log["joint"] = fit_stage(
        model.parameters(), model, n,
        lambda i: joint_loss(model, x[i], *batch(i), s[i], user_for(i), weight)[0],
        epochs=config.joint_epochs if pretrained_rnn else config.rnn_epochs + config.joint_epochs,
        lr=config.joint_lr if pretrained_rnn else config.rnn_lr, seed=seed + 5, desc="joint",
        val_score=on_val(val_h_f1), **common,
    )  # fmt: skip
    trained.log = log
    return trained
