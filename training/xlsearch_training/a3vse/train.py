"""A3VSE training (Eq. 9-10): triplet alignment on annotated pairs and image-semantic pairs, plus the six domain
discriminators trained through gradient reversal, on cached region features.

Each step samples a mini-batch of annotated images (one of their sentences each) and a mini-batch of un-annotated
images (with their concept sequence). The Chinese model (image encoder + zh text encoder) is trained with the full
objective; model selection is the epoch with the best validation CM MRR (zh sentence -> image). The English text
encoder is then trained into the frozen image space with the triplet objective of Eq. 3 (sentences and English
concept sequences); it serves cross-lingual (CL) matching only.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from xlsearch.common.progress import progress as progress_bar
from xlsearch.encode.text import Vocab, encode_batch
from xlsearch.eval.metrics import retrieval_metrics
from xlsearch_training.a3vse.config import A3VSETrainConfig
from xlsearch_training.a3vse.losses import domain_loss, hardest_negative_triplet, info_nce
from xlsearch_training.a3vse.model import (
    A3VSE,
    DOMAIN_PAIRS,
    A3VSEModelConfig,
    TextEncoder,
    VisualEncoder,
    grad_reverse,
    grl_coefficient,
)
from xlsearch_training.a3vse.regions import RegionStore


@dataclass
class Annotated:
    """Annotated images: region-store rows and the tokenised sentences of each image (one language)."""

    rows: np.ndarray
    sentences: list[list[list[str]]]
    vectors: list[np.ndarray] | None = None  # per image [n_sentences, E]: the frozen sentence embeddings


@dataclass
class Unannotated:
    """Un-annotated images: region-store rows and one tokenised concept sequence per image (may be empty)."""

    rows: np.ndarray
    semantics: list[list[str]]
    vectors: np.ndarray | None = None  # [N, E] sentence embeddings of the concept sequences


@dataclass
class Queries:
    """Validation/test retrieval: sentences (tokens), candidate image rows, and each query's candidate index."""

    tokens: list[list[str]]
    rows: np.ndarray
    relevant: np.ndarray
    vectors: np.ndarray | None = None  # [Q, E] sentence embeddings of the queries


@dataclass
class TrainedText:
    encoder: TextEncoder
    vocab: Vocab
    best: dict
    history: list[dict]


@dataclass
class TrainedA3VSE:
    model_config: A3VSEModelConfig
    visual: VisualEncoder
    text: dict[str, TrainedText]


def build_vocab(annotated: Annotated, unannotated: Unannotated | None, min_count: int) -> Vocab:
    tokens = [s for sents in annotated.sentences for s in sents]
    if unannotated is not None:
        tokens += [s for s in unannotated.semantics if s]
    return Vocab.build(tokens, min_count=min_count)


WordVectors = Callable[[list[str]], np.ndarray]


def init_word_embeddings(encoder: TextEncoder, vocab: Vocab, word_vectors: WordVectors) -> None:
    """Copy the pretrained vector of every vocabulary token (pad and unk excepted) into the embedding matrix."""
    vectors = np.asarray(word_vectors(vocab.tokens[2:]), dtype=np.float32)
    weight = encoder.embedding.weight
    if vectors.shape != (len(vocab) - 2, weight.shape[1]):
        raise ValueError(f"word vectors {vectors.shape} do not fit the embedding {tuple(weight.shape)}")
    with torch.no_grad():
        weight[2:] = torch.from_numpy(vectors)


def _maybe_init_words(
    cfg: A3VSETrainConfig, encoder: TextEncoder, vocab: Vocab, word_vectors: WordVectors | None
):
    if cfg.word_init == "sentence_encoder":
        if word_vectors is None:
            raise ValueError("word_init 'sentence_encoder' needs word_vectors")
        init_word_embeddings(encoder, vocab, word_vectors)


def _text(
    encoder: TextEncoder,
    vocab: Vocab,
    tokens: list[list[str]],
    max_len: int,
    vectors: np.ndarray | None = None,
) -> Tensor:
    ids, lengths = encode_batch(tokens, vocab, max_len)
    sentence = None
    if encoder.sentence_dim:
        if vectors is None:
            raise ValueError("this text encoder needs the sentence embeddings of its texts")
        sentence = torch.from_numpy(np.asarray(vectors, dtype=np.float32))
    return encoder(torch.from_numpy(ids), torch.from_numpy(lengths), sentence)


def _pick_sentences(
    annotated: Annotated, idx: list[int] | np.ndarray, rng: np.random.Generator
) -> tuple[list[list[str]], np.ndarray | None]:
    """One random sentence per image (and its sentence embedding when the data carries them)."""
    picks = [(i, int(rng.integers(len(annotated.sentences[i])))) for i in idx]
    tokens = [annotated.sentences[i][j] for i, j in picks]
    vectors = annotated.vectors
    return tokens, (np.stack([vectors[i][j] for i, j in picks]) if vectors is not None else None)


def _sentence_dim(cfg: A3VSETrainConfig, annotated: Annotated) -> int:
    """E of the data's sentence embeddings when the config uses the sentence branch, else 0."""
    if not cfg.uses_sentence:
        return 0
    if annotated.vectors is None or not len(annotated.vectors):
        raise ValueError(
            f"sentence_branch {cfg.sentence_branch!r} needs the sentence embeddings of the texts"
        )
    return int(np.asarray(annotated.vectors[0]).shape[-1])


def embed_images(visual: VisualEncoder, store: RegionStore, rows: np.ndarray, batch: int = 128) -> np.ndarray:
    visual.eval()
    with torch.no_grad():
        parts = [visual(store.take(rows[i : i + batch])).numpy() for i in range(0, len(rows), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def embed_texts(
    encoder: TextEncoder,
    vocab: Vocab,
    tokens: list[list[str]],
    max_len: int,
    vectors: np.ndarray | None = None,
) -> np.ndarray:
    encoder.eval()
    with torch.no_grad():
        parts = [
            _text(
                encoder,
                vocab,
                tokens[i : i + 256],
                max_len,
                vectors[i : i + 256] if vectors is not None else None,
            ).numpy()
            for i in range(0, len(tokens), 256)
        ]
    return np.concatenate(parts)


def _val_mrr(image_vecs: np.ndarray, text_vecs: np.ndarray, q: Queries) -> dict[str, float]:
    return retrieval_metrics(text_vecs @ image_vecs.T, q.relevant)


def same_sequence(seqs: list[list[str]]) -> Tensor:
    """[B, B] bool: True where two different rows carry the identical token sequence."""
    keys = [tuple(s) for s in seqs]
    same = torch.tensor([[x == y for y in keys] for x in keys], dtype=torch.bool)
    return same & ~torch.eye(len(keys), dtype=torch.bool)


def _align(
    cfg: A3VSETrainConfig, images: Tensor, texts: Tensor, margin: float, mask: Tensor | None = None
) -> Tensor:
    if cfg.alignment_loss == "infonce":
        return info_nce(images, texts, cfg.infonce_temperature, mask)
    return hardest_negative_triplet(images, texts, margin, mask)


def _semantic_triplet(cfg: A3VSETrainConfig, images: Tensor, texts: Tensor, seqs: list[list[str]]) -> Tensor:
    mask = same_sequence(seqs) if cfg.semantic_negatives == "distinct" else None
    return _align(cfg, images, texts, cfg.alpha_vs, mask)


def _semantic_pairs(un: Unannotated | None) -> Unannotated | None:
    """The un-annotated images that have a non-empty concept sequence."""
    if un is None:
        return None
    keep = [i for i, s in enumerate(un.semantics) if s]
    vectors = un.vectors[keep] if un.vectors is not None else None
    return Unannotated(un.rows[keep], [un.semantics[i] for i in keep], vectors)


def train_a3vse(
    cfg: A3VSETrainConfig,
    store: RegionStore,
    annotated: Annotated,
    unannotated: Unannotated | None,
    val: Queries,
    seed: int = 0,
    progress: bool = True,
    word_vectors: WordVectors | None = None,
) -> tuple[A3VSE, TrainedText]:
    """Train G^v and one language's G^t with Eq. 9. `unannotated.semantics` is ignored when cfg.semantics is
    "none" (the un-annotated images then only enter the adversarial terms that need no text)."""
    torch.manual_seed(seed)
    random.seed(seed)
    rng = np.random.default_rng(seed)
    use_sem = cfg.semantics != "none" and unannotated is not None
    sem = _semantic_pairs(unannotated) if use_sem else None
    vocab = build_vocab(annotated, sem, cfg.min_count)
    mcfg = cfg.model_config(store.regions.shape[2], _sentence_dim(cfg, annotated))
    model = A3VSE(mcfg, len(vocab))
    _maybe_init_words(cfg, model.text, vocab, word_vectors)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_l = len(annotated.rows)
    b_l = min(cfg.batch_size, n_l)
    pool = sem if use_sem else unannotated
    b_u = min(cfg.unannotated_batch_size, len(pool.rows)) if pool is not None else 0
    steps = cfg.steps_per_epoch or max(cfg.min_steps_per_epoch, -(-n_l // b_l))
    total_steps = steps * cfg.epochs
    groups = set(cfg.adversarial)
    history: list[dict] = []
    best: dict = {"mrr": -1.0}
    best_state = None
    bar = progress_bar(range(cfg.epochs), desc="a3vse", disable=not progress, leave=False)
    order_l: list[int] = []
    order_u: list[int] = []
    for epoch in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.lr if epoch < cfg.lr_drop_epoch else cfg.lr_low
        model.train()
        totals: dict[str, float] = {}
        for step in range(steps):
            gamma = grl_coefficient((epoch * steps + step) / max(total_steps - 1, 1), cfg.eta)
            if len(order_l) < b_l:
                order_l += rng.permutation(n_l).tolist()
            idx, order_l = order_l[:b_l], order_l[b_l:]
            sentences, sent_vecs = _pick_sentences(annotated, idx, rng)
            gv = model.visual(store.take(annotated.rows[idx]))
            gt = _text(model.text, vocab, sentences, cfg.max_len, sent_vecs)
            tri_vt = _align(cfg, gv, gt, cfg.alpha_vt)
            domains = {"v": gv, "t": gt}
            parts = {"tri_vt": tri_vt}
            loss = tri_vt
            if pool is not None and b_u >= 2:
                if len(order_u) < b_u:
                    order_u += rng.permutation(len(pool.rows)).tolist()
                uidx, order_u = order_u[:b_u], order_u[b_u:]
                domains["vu"] = model.visual(store.take(pool.rows[uidx]))
                if use_sem:
                    seqs = [pool.semantics[i] for i in uidx]
                    seq_vecs = pool.vectors[uidx] if pool.vectors is not None else None
                    domains["s"] = _text(model.text, vocab, seqs, cfg.max_len, seq_vecs)
                    tri_vs = _semantic_triplet(cfg, domains["vu"], domains["s"], seqs)
                    parts["tri_vs"] = tri_vs
                    loss = cfg.beta * tri_vt + (1 - cfg.beta) * tri_vs
            for name, a, b, group in DOMAIN_PAIRS:
                if group in groups and a in domains and b in domains:
                    d = model.discriminators[name]
                    adv = domain_loss(d(grad_reverse(domains[a], gamma)), d(grad_reverse(domains[b], gamma)))
                    parts[f"d_{name}"] = adv
                    loss = loss + cfg.lambdas[name] * adv
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + v.item() / steps
        m = _val_mrr(
            embed_images(model.visual, store, val.rows),
            embed_texts(model.text, vocab, val.tokens, cfg.max_len, val.vectors),
            val,
        )
        history.append({"epoch": epoch, **{k: round(v, 4) for k, v in totals.items()}, **m})
        if m["mrr"] > best["mrr"]:
            best = {"epoch": epoch, **m}
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(val_mrr=f"{m['mrr']:.3f}", best=f"{best['mrr']:.3f}")
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    return model, TrainedText(model.text, vocab, best, history)


def train_text_into(
    cfg: A3VSETrainConfig,
    visual: VisualEncoder,
    store: RegionStore,
    annotated: Annotated,
    unannotated: Unannotated | None,
    val: Queries,
    seed: int = 0,
    progress: bool = True,
    word_vectors: WordVectors | None = None,
) -> TrainedText:
    """A text encoder trained into the frozen image space of `visual` (Eq. 3, triplet terms only); the image
    embeddings are computed once."""
    torch.manual_seed(seed + 1)
    rng = np.random.default_rng(seed + 1)
    use_sem = cfg.semantics != "none" and unannotated is not None
    sem = _semantic_pairs(unannotated) if use_sem else None
    vocab = build_vocab(annotated, sem, cfg.min_count)
    mcfg = cfg.model_config(store.regions.shape[2], _sentence_dim(cfg, annotated))
    encoder = TextEncoder(mcfg, len(vocab))
    _maybe_init_words(cfg, encoder, vocab, word_vectors)
    opt = torch.optim.Adam(encoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    img_l = torch.from_numpy(embed_images(visual, store, annotated.rows))
    img_u = torch.from_numpy(embed_images(visual, store, sem.rows)) if sem is not None else None
    val_img = embed_images(visual, store, val.rows)
    n_l = len(annotated.rows)
    b_l = min(cfg.batch_size, n_l)
    b_u = min(cfg.unannotated_batch_size, len(sem.rows)) if sem is not None else 0
    steps = cfg.steps_per_epoch or max(cfg.min_steps_per_epoch, -(-n_l // b_l))
    best: dict = {"mrr": -1.0}
    best_state = None
    history: list[dict] = []
    for epoch in progress_bar(range(cfg.en_epochs), desc="text", disable=not progress, leave=False):
        for g in opt.param_groups:
            g["lr"] = (
                cfg.lr if epoch < cfg.lr_drop_epoch * cfg.en_epochs // max(cfg.epochs, 1) else cfg.lr_low
            )
        encoder.train()
        for _ in range(steps):
            idx = rng.choice(n_l, b_l, replace=False)
            sentences, sent_vecs = _pick_sentences(annotated, idx, rng)
            loss = _align(
                cfg, img_l[idx], _text(encoder, vocab, sentences, cfg.max_len, sent_vecs), cfg.alpha_vt
            )
            if sem is not None and img_u is not None and b_u >= 2:
                uidx = rng.choice(len(sem.rows), b_u, replace=False)
                seqs = [sem.semantics[i] for i in uidx]
                s = _text(
                    encoder, vocab, seqs, cfg.max_len, sem.vectors[uidx] if sem.vectors is not None else None
                )
                loss = cfg.beta * loss + (1 - cfg.beta) * _semantic_triplet(cfg, img_u[uidx], s, seqs)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(encoder.parameters(), cfg.grad_clip)
            opt.step()
        m = _val_mrr(val_img, embed_texts(encoder, vocab, val.tokens, cfg.max_len, val.vectors), val)
        history.append({"epoch": epoch, **m})
        if m["mrr"] > best["mrr"]:
            best = {"epoch": epoch, **m}
            best_state = copy.deepcopy(encoder.state_dict())
    assert best_state is not None
    encoder.load_state_dict(best_state)
    encoder.eval()
    return TrainedText(encoder, vocab, best, history)
