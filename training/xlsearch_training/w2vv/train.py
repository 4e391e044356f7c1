"""Train W2VV / Enhanced W2VV sentence encoders (one per language) to predict image vectors.

`train_pair` trains the image head and both encoders (hyper-parameters: `config.TrainConfig`); the pipeline (`xlsearch-train`) is the entry point. Model selection: the epoch with the best validation MRR of sentence -> image (cross-modal) retrieval.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import numpy as np
import torch

from xlsearch.common.progress import progress as progress_bar
from xlsearch.data.manifest import Manifest
from xlsearch.encode.text import Vocab, encode_batch, tokenizer_for
from xlsearch.eval.metrics import retrieval_metrics
from xlsearch_training.w2vv.config import TrainConfig
from xlsearch_training.w2vv.image_head import ImageHead
from xlsearch_training.w2vv.losses import contrastive_loss, infonce_loss, mse_loss, vse_hardest_negative_loss
from xlsearch_training.w2vv.model import TextEncoderConfig, W2VVTextEncoder, build_text_encoder


@dataclass
class Pairs:
    """Sentence/image training pairs of one language and one split."""

    sentences: list[str]
    tokens: list[list[str]]
    image_index: np.ndarray  # index into the split's image list
    image_ids: list[str]


def collect_pairs(manifest: Manifest, split: str, lang: str) -> Pairs:
    tok = tokenizer_for(lang)
    sentences, tokens, index, ids = [], [], [], []
    for rec in manifest.split(split):
        texts = getattr(rec, lang)
        if not texts:
            continue
        ids.append(rec.id)
        for s in texts:
            sentences.append(s)
            tokens.append(tok.tokenize(s))
            index.append(len(ids) - 1)
    return Pairs(sentences, tokens, np.asarray(index, dtype=np.int64), ids)


@dataclass
class TrainedEncoder:
    model: W2VVTextEncoder
    model_config: TextEncoderConfig
    vocab: Vocab
    lang: str
    history: list[dict]
    best: dict


def _loss(cfg: TrainConfig, text: torch.Tensor, image: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
    """Two sentences of one image in a batch are never each other's negatives (`image_ids`)."""
    if cfg.loss == "mse":
        return mse_loss(text, image)
    if cfg.loss == "contrastive":
        return contrastive_loss(text, image, margin=cfg.margin, image_ids=image_ids)
    if cfg.loss == "infonce":
        return infonce_loss(text, image, temperature=cfg.temperature, image_ids=image_ids)
    return vse_hardest_negative_loss(text, image, margin=cfg.margin, image_ids=image_ids)


def _embed(model: W2VVTextEncoder, vocab: Vocab, tokens, sent, max_len: int, bs: int = 256) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(tokens), bs):
            ids, lengths = encode_batch(tokens[i : i + bs], vocab, max_len)
            s = torch.from_numpy(sent[i : i + bs]) if sent is not None else None
            out.append(model.embed(torch.from_numpy(ids), torch.from_numpy(lengths), s).numpy())
    return np.concatenate(out)


def train_encoder(
    cfg: TrainConfig,
    lang: str,
    train: Pairs,
    val: Pairs,
    image_vectors: dict[str, np.ndarray],
    head: ImageHead,
    train_head: bool,
    sentence_vectors: dict[str, np.ndarray] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> TrainedEncoder:
    """Fit an encoder of `lang` sentences onto head(image vectors); keep the epoch with the best val MRR.

    With `train_head` the image head's projection is learned jointly (and its best state kept); otherwise the head
    is frozen and the encoder learns into its space."""
    torch.manual_seed(seed)
    random.seed(seed)
    rng = np.random.default_rng(seed)
    vocab = Vocab.build(train.tokens, min_count=cfg.min_count)
    sent_dim = len(next(iter(sentence_vectors.values()))) if cfg.sentence_branch and sentence_vectors else 0
    mcfg = TextEncoderConfig(
        vocab_size=len(vocab),
        out_dim=head.dim,
        word_dim=cfg.word_dim,
        gru_dim=cfg.gru_dim,
        attention=cfg.attention,
        use_bow=cfg.use_bow,
        use_mean_embedding=cfg.use_mean_embedding,
        use_gru=cfg.use_gru,
        sentence_dim=sent_dim,
        mlp_hidden=list(cfg.mlp_hidden),
        dropout=cfg.dropout,
    )
    model = build_text_encoder(mcfg)
    params = list(model.parameters()) + (list(head.parameters()) if train_head else [])
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    head.requires_grad_(train_head)

    def sent(p: Pairs) -> np.ndarray | None:
        if not sent_dim:
            return None
        return np.stack([sentence_vectors[s] for s in p.sentences]).astype(np.float32)

    train_img = torch.from_numpy(np.stack([image_vectors[i] for i in train.image_ids]).astype(np.float32))
    val_img = torch.from_numpy(np.stack([image_vectors[i] for i in val.image_ids]).astype(np.float32))
    train_sent, val_sent = sent(train), sent(val)
    history: list[dict] = []
    best: dict = {"mrr": -1.0}
    best_state = best_head = None
    bar = progress_bar(range(cfg.epochs), desc=f"train {lang}", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        head.train(train_head)
        order = rng.permutation(len(train.tokens))
        total = 0.0
        for b in range(0, len(order), cfg.batch_size):
            idx = order[b : b + cfg.batch_size]
            if len(idx) < 2:
                continue
            ids, lengths = encode_batch([train.tokens[i] for i in idx], vocab, cfg.max_len)
            s = torch.from_numpy(train_sent[idx]) if train_sent is not None else None
            text = model.embed(torch.from_numpy(ids), torch.from_numpy(lengths), s)
            img_idx = torch.from_numpy(train.image_index[idx])
            loss = _loss(cfg, text, head(train_img[img_idx]), img_idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        head.eval()
        with torch.no_grad():
            v = head(val_img).numpy()
        q = _embed(model, vocab, val.tokens, val_sent, cfg.max_len)
        m = retrieval_metrics(q @ v.T, val.image_index)
        history.append({"epoch": epoch, "loss": total / len(order), **m})
        if m["mrr"] > best["mrr"]:
            best = {"epoch": epoch, **m}
            best_state = copy.deepcopy(model.state_dict())
            best_head = copy.deepcopy(head.state_dict())
        bar.set_postfix(
            loss=f"{total / len(order):.4f}", val_mrr=f"{m['mrr']:.3f}", best=f"{best['mrr']:.3f}"
        )
    assert best_state is not None and best_head is not None
    model.load_state_dict(best_state)
    head.load_state_dict(best_head)
    model.eval()
    head.eval()
    head.requires_grad_(False)
    return TrainedEncoder(model, mcfg, vocab, lang, history, best)


def train_pair(
    cfg: TrainConfig,
    manifest: Manifest,
    image_vectors: dict[str, np.ndarray],
    sentence_vectors: dict[str, dict[str, np.ndarray]] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[ImageHead, dict[str, TrainedEncoder]]:
    """The image head and both encoders: zh first (learning the head's projection, if any), then en into the
    same, frozen space. Each language is trained separately on its own sentences."""
    train_ids = [r.id for r in manifest.split("train")]
    train_img = torch.from_numpy(np.stack([image_vectors[i] for i in train_ids]).astype(np.float32))
    center = torch.nn.functional.normalize(train_img, dim=1).mean(0) if cfg.center_images else None
    torch.manual_seed(seed)
    head = ImageHead(train_img.shape[1], cfg.image_projection, center)
    encoders = {}
    for lang in ("zh", "en"):
        encoders[lang] = train_encoder(
            cfg,
            lang,
            collect_pairs(manifest, "train", lang),
            collect_pairs(manifest, "val", lang),
            image_vectors,
            head,
            train_head=lang == "zh" and cfg.image_projection > 0,
            sentence_vectors=(sentence_vectors or {}).get(lang) if cfg.sentence_branch else None,
            seed=seed,
            progress=progress,
        )
    return head, encoders
