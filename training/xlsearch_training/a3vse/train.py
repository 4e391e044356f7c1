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
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from xlsearch.encode.text import Vocab, encode_batch
from xlsearch.eval.metrics import retrieval_metrics
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
from xlsearch_training.a3vse.semantics import SEMANTICS

ADVERSARIAL_GROUPS = ("intra", "cross", "trans")
# Sec. 4.3
SENTENCE_BRANCHES = ("none", "fused", "sentence_only")
DEFAULT_LAMBDAS = {"v_vu": 0.2, "t_s": 0.1, "v_t": 0.5, "vu_s": 0.5, "v_s": 0.3, "vu_t": 0.3}


@dataclass
class A3VSETrainConfig:
    """Hyper-parameters (defaults: the paper's Sec. 4.3 where it gives them)."""

    hidden: int = 512
    heads: int = 3
    context_dim: int = 512
    temperature: float = 0.0
    word_dim: int = 300
    disc_hidden: int = 256
    # which concept sequences pair with D^u: "regional" | "global" (ImageNet), "tag_regional" | "tag_global" (the
    # run's tag classifier) | "none"
    semantics: str = "regional"
    adversarial: list[str] = field(default_factory=lambda: list(ADVERSARIAL_GROUPS))
    lambdas: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LAMBDAS))
    alpha_vt: float = 0.2
    alpha_vs: float = 0.3
    beta: float = 0.8
    eta: float = 10.0
    epochs: int = 24
    lr: float = 5e-4
    lr_low: float = 5e-5
    lr_drop_epoch: int = 16
    weight_decay: float = 1e-6
    grad_clip: float = 2.0
    batch_size: int = 128
    unannotated_batch_size: int = 128
    steps_per_epoch: int = 0  # 0: one pass over the annotated images, but at least min_steps_per_epoch
    min_steps_per_epoch: int = 1
    max_len: int = 32
    min_count: int = 1
    en_epochs: int = 10
    # semantic triplet negatives: "all" in-batch images (Eq. 2), or "distinct": not the images whose concept sequence
    # is identical to the positive's (many un-annotated images share one, e.g. a single frequent tag)
    semantic_negatives: str = "all"
    # "random" (Xavier-like default) or "sentence_encoder": word embeddings start from the pretrained multilingual
    # sentence encoder's vector of each vocabulary token (the paper starts from GloVe; word_dim must equal its dim)
    word_init: str = "random"
    # the frozen pretrained sentence embedding of each text (sentences and concept sequences) in G^t: "none",
    # "fused" (projected and added to the attentive LSTM output) or "sentence_only"
    sentence_branch: str = "none"
    # the alignment terms of Eq. 3: "triplet" (Eq. 2, hardest in-batch negatives, the paper) or "infonce"
    alignment_loss: str = "triplet"
    infonce_temperature: float = 0.1

    def __post_init__(self) -> None:
        if self.alignment_loss not in ("triplet", "infonce"):
            raise ValueError(f"alignment_loss must be triplet or infonce, got {self.alignment_loss!r}")
        if self.sentence_branch not in SENTENCE_BRANCHES:
            raise ValueError(
                f"sentence_branch must be one of {SENTENCE_BRANCHES}, got {self.sentence_branch!r}"
            )
        unknown = set(self.adversarial) - set(ADVERSARIAL_GROUPS)
        if unknown:
            raise ValueError(f"unknown adversarial groups {sorted(unknown)}; expected {ADVERSARIAL_GROUPS}")
        if self.word_init not in ("random", "sentence_encoder"):
            raise ValueError(f"word_init must be random or sentence_encoder, got {self.word_init!r}")
        if self.semantic_negatives not in ("all", "distinct"):
            raise ValueError(f"semantic_negatives must be all or distinct, got {self.semantic_negatives!r}")
        if self.semantics not in SEMANTICS:
            raise ValueError(f"semantics must be one of {SEMANTICS}, got {self.semantics!r}")

    @property
    def uses_sentence(self) -> bool:
        return self.sentence_branch != "none"

    def model_config(self, region_dim: int, sentence_dim: int = 0) -> A3VSEModelConfig:
        return A3VSEModelConfig(
            region_dim=region_dim,
            hidden=self.hidden,
            heads=self.heads,
            context_dim=self.context_dim,
            temperature=self.temperature,
            word_dim=self.word_dim,
            disc_hidden=self.disc_hidden,
            sentence_dim=sentence_dim if self.uses_sentence else 0,
            text_mode="lstm" if not self.uses_sentence else self.sentence_branch,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> A3VSETrainConfig:
        return cls(**d)


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
    bar = tqdm(range(cfg.epochs), desc="a3vse", disable=not progress, leave=False)
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
    for epoch in tqdm(range(cfg.en_epochs), desc="text", disable=not progress, leave=False):
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
