"""Train one W2VV / Enhanced W2VV sentence encoder (one language) to predict image vectors.

`main(argv)` trains from a manifest + cached image features; `train_encoder` is the library entry used by the
pipeline. Model selection: the epoch with the best validation MRR of sentence -> image (cross-modal) retrieval.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from xlsearch.manifest import Manifest, read_manifest
from xlsearch.metrics import retrieval_metrics
from xlsearch.text import Vocab, encode_batch, tokenizer_for
from xlsearch.training.losses import contrastive_loss, infonce_loss, mse_loss, vse_hardest_negative_loss
from xlsearch.training.w2vv import TextEncoderConfig, W2VVTextEncoder, build_text_encoder

LOSSES = ("mse", "contrastive", "infonce", "vse")


@dataclass
class TrainConfig:
    """Hyper-parameters of one encoder; JSON <-> dataclass."""

    attention: bool = True
    loss: str = "contrastive"
    margin: float = 2.0  # contrastive (Eq. 2) margin on Euclidean distance; VSE++ margin when loss == "vse"
    temperature: float = 0.05
    sentence_branch: bool = False
    word_dim: int = 300
    gru_dim: int = 512
    mlp_hidden: list[int] = field(default_factory=lambda: [2048])
    dropout: float = 0.2
    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    min_count: int = 1
    max_len: int = 32

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(**d)


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
    sentence_vectors: dict[str, np.ndarray] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> TrainedEncoder:
    """Fit an encoder of `lang` sentences onto the (L2-normalised) image vectors; keep the best val epoch."""
    torch.manual_seed(seed)
    random.seed(seed)
    rng = np.random.default_rng(seed)
    vocab = Vocab.build(train.tokens, min_count=cfg.min_count)
    dim = len(next(iter(image_vectors.values())))
    sent_dim = len(next(iter(sentence_vectors.values()))) if cfg.sentence_branch and sentence_vectors else 0
    mcfg = TextEncoderConfig(
        vocab_size=len(vocab),
        out_dim=dim,
        word_dim=cfg.word_dim,
        gru_dim=cfg.gru_dim,
        attention=cfg.attention,
        sentence_dim=sent_dim,
        mlp_hidden=list(cfg.mlp_hidden),
        dropout=cfg.dropout,
    )
    model = build_text_encoder(mcfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def sent(p: Pairs) -> np.ndarray | None:
        if not sent_dim:
            return None
        return np.stack([sentence_vectors[s] for s in p.sentences]).astype(np.float32)

    train_img = torch.from_numpy(np.stack([image_vectors[i] for i in train.image_ids]).astype(np.float32))
    val_img = np.stack([image_vectors[i] for i in val.image_ids]).astype(np.float32)
    train_sent, val_sent = sent(train), sent(val)
    history: list[dict] = []
    best: dict = {"mrr": -1.0}
    best_state = None
    bar = tqdm(range(cfg.epochs), desc=f"train {lang}", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
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
            loss = _loss(cfg, text, torch.nn.functional.normalize(train_img[img_idx], dim=1), img_idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        q = _embed(model, vocab, val.tokens, val_sent, cfg.max_len)
        m = retrieval_metrics(q @ val_img.T, val.image_index)
        history.append({"epoch": epoch, "loss": total / len(order), **m})
        if m["mrr"] > best["mrr"]:
            best = {"epoch": epoch, **m}
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(
            loss=f"{total / len(order):.4f}", val_mrr=f"{m['mrr']:.3f}", best=f"{best['mrr']:.3f}"
        )
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    return TrainedEncoder(model, mcfg, vocab, lang, history, best)


def main(argv: list[str] | None = None) -> int:
    """Train zh and en encoders from a manifest and an image-feature file (.npz with `ids`, `features`)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--features", required=True, help=".npz with arrays ids, features")
    ap.add_argument("--config", help="JSON file with TrainConfig fields")
    ap.add_argument("--out", required=True, help="folder for checkpoints and history")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = TrainConfig.from_dict(json.loads(Path(args.config).read_text())) if args.config else TrainConfig()
    manifest = read_manifest(args.manifest)
    npz = np.load(args.features)
    vectors = dict(zip([str(i) for i in npz["ids"]], npz["features"], strict=True))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for lang in ("zh", "en"):
        enc = train_encoder(
            cfg,
            lang,
            collect_pairs(manifest, "train", lang),
            collect_pairs(manifest, "val", lang),
            vectors,
            seed=args.seed,
        )
        torch.save(
            {
                "state_dict": enc.model.state_dict(),
                "model_config": asdict(enc.model_config),
                "vocab": enc.vocab.to_json(),
                "train_config": asdict(cfg),
            },
            out / f"text_encoder_{lang}.pt",
        )
        (out / f"history_{lang}.json").write_text(
            json.dumps({"best": enc.best, "history": enc.history}, indent=1)
        )
        print(f"{lang}: best val MRR {enc.best['mrr']:.3f} at epoch {enc.best['epoch']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
