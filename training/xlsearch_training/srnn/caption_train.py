"""Training the S-CNN-RNN captioner (Liu et al. Sec. 3.3 and 5; hyper-parameters: ``SRNNCaptionerConfig``).

Concepts: the tag vocabulary of the caption language built from the training split (``xlsearch.encode.tag_vocab``:
manual tags + the content words of the sentences, min count 2 for Chinese, the 512 most frequent English ones — the
paper takes the 1,000 most frequent caption words); an image's ground truth s is its tags in that vocabulary.

1. in parallel: the concept model (BCE, Eq. 5; lowest validation loss kept) and the LSTM fed the ground-truth s
   (its sentence NLL; lowest validation NLL);
2. joint fine-tuning, L = L_u + L_r with the LSTM fed s^ (best validation CIDEr-D of greedy decoding kept).
The ablations (NIC-F, NIC-deeply) skip what they cannot pretrain, as the tagger does. ``transfer``: an English
S-CNN-RNN first; its concept model (English concepts) and the FC from concepts to the LSTM state are kept, a new
Chinese LSTM, word embedding, softmax and vocabulary are trained on Chinese, L_u staying on the English concepts.

The result is a ``captioning.train.Trained``: the model has the Show-and-Tell captioner's ``init_state`` / ``step``,
so the captioner's export, ONNX parity check and torch-free beam search serve it unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from xlsearch.data.manifest import Manifest
from xlsearch.encode.tag_vocab import TagVocabConfig, TagVocabulary, vocabularies_for
from xlsearch.encode.text import PAD_ID, Vocab
from xlsearch_training.captioning.corpora import Sentences
from xlsearch_training.captioning.decode import Evaluator
from xlsearch_training.captioning.inputs import SplitData
from xlsearch_training.captioning.train import Trained
from xlsearch_training.captioning.vocab import build_caption_vocab, encode_caption, segment_all
from xlsearch_training.srnn.config import SRNNCaptionerConfig
from xlsearch_training.srnn.fit import fit_stage
from xlsearch_training.srnn.losses import concept_loss, joint_loss, sequence_loss
from xlsearch_training.srnn.model import SCNNRNN, ConceptModel, Decoder
from xlsearch_training.srnn.sequences import trim


def caption_concepts(manifest: Manifest, cfg: SRNNCaptionerConfig) -> dict[str, tuple[TagVocabulary, dict]]:
    """{lang: (concept vocabulary, {image id: multi-hot float32 [k]})} for zh and en, from the training split."""
    zh, en, tags = vocabularies_for(manifest, TagVocabConfig.from_dict(cfg.concepts))
    out = {}
    for lang, vocab, per in (("zh", zh, tags.zh), ("en", en, tags.en)):
        out[lang] = (vocab, {r.id: vocab.multi_hot([per[r.id]])[0] for r in manifest.records})
    return out


def _samples(
    train: Sentences, lang: str, vocab: Vocab, max_len: int
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(image id per sentence, inputs [N,T] = <bos> w1 .., targets [N,T] = w1 .. <eos>, padded with PAD_ID)."""
    ids = sorted(train)
    owners = [i for i in ids for _ in train[i]]
    tokens = segment_all([s for i in ids for s in train[i]], lang)
    pairs = [(o, encode_caption(t, vocab, max_len)) for o, t in zip(owners, tokens, strict=True) if t]
    width = max(len(seq) for _, seq in pairs) - 1
    inputs = np.zeros((len(pairs), width), dtype=np.int64)
    targets = np.zeros((len(pairs), width), dtype=np.int64)
    for row, (_, seq) in enumerate(pairs):
        inputs[row, : len(seq) - 1] = seq[:-1]
        targets[row, : len(seq) - 1] = seq[1:]
    return [o for o, _ in pairs], inputs, targets


def _new_model(dim: int, n_concepts: int, vocab: Vocab, cfg: SRNNCaptionerConfig, seed: int) -> SCNNRNN:
    torch.manual_seed(seed)
    concept = ConceptModel(dim, n_concepts, cfg.hidden, cfg.dropout, cfg.feature_scale)
    interface = n_concepts if cfg.interface == "concepts" else cfg.hidden
    decoder = Decoder(interface, len(vocab), len(vocab), cfg.word_dim, cfg.lstm, cfg.lstm_dropout, PAD_ID)
    return SCNNRNN(concept, decoder, cfg.interface)


def fit_captioner(
    model: SCNNRNN,
    vocab: Vocab,
    lang: str,
    data: SplitData,
    concepts: dict[str, np.ndarray],
    cfg: SRNNCaptionerConfig,
    seed: int,
    *,
    pretrain_concepts: bool,
    desc: str,
) -> tuple[float, dict[str, Any]]:
    """Stages 1-2 on ``lang``'s training sentences; returns (best validation CIDEr-D, log)."""
    corpus = data.zh if lang == "zh" else data.en
    owners, inputs, targets = _samples(corpus["train"], lang, vocab, cfg.max_len)
    x = torch.from_numpy(np.stack([data.features[i] for i in owners]).astype(np.float32))
    s = torch.from_numpy(np.stack([concepts[i] for i in owners]))
    inp, tgt = torch.from_numpy(inputs), torch.from_numpy(targets)
    v_owners, v_inputs, v_targets = _samples(corpus["val"], lang, vocab, cfg.max_len)
    vx = torch.from_numpy(np.stack([data.features[i] for i in v_owners]).astype(np.float32))
    vs = torch.from_numpy(np.stack([concepts[i] for i in v_owners]))
    vin, vtg = torch.from_numpy(v_inputs), torch.from_numpy(v_targets)
    val = Evaluator(corpus["val"], data.features, lang)
    n, log = len(owners), {}
    common = dict(
        batch_size=cfg.batch_size, weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip, lr_decay=cfg.lr_decay,
        decay_every=cfg.decay_every, progress=cfg.progress,
    )  # fmt: skip
    concept, decoder = model.concept, model.decoder
    if pretrain_concepts and cfg.deep_supervision:
        log["concepts"] = fit_stage(
            concept.parameters(), model, n, lambda i: concept_loss(concept(x[i])[1], s[i]),
            epochs=cfg.concept_epochs, lr=cfg.concept_lr, seed=seed, desc=f"{desc} concepts",
            val_score=lambda: -float(concept_loss(concept(vx)[1], vs)), **common,
        )  # fmt: skip
    pretrained_rnn = cfg.interface == "concepts" and cfg.deep_supervision

    def rnn_loss(i: Tensor) -> Tensor:
        inputs_i, targets_i = trim(inp[i], tgt[i], PAD_ID)
        return sequence_loss(decoder(s[i], inputs_i), targets_i, ignore_index=PAD_ID)

    if pretrained_rnn:
        log["rnn"] = fit_stage(
            decoder.parameters(), model, n,
            rnn_loss,
            epochs=cfg.rnn_epochs, lr=cfg.rnn_lr, seed=seed + 1, desc=f"{desc} lstm",
            val_score=lambda: -float(sequence_loss(decoder(vs, vin), vtg, ignore_index=PAD_ID)), **common,
        )  # fmt: skip
    weight = cfg.concept_weight if cfg.deep_supervision else 0.0

    def val_cider() -> float:
        return val.scores(val.sentences(model, vocab, None, cfg))["CIDEr-D"]

    def loss(i: Tensor) -> Tensor:
        return joint_loss(
            model, x[i], *trim(inp[i], tgt[i], PAD_ID), s[i], None, weight, ignore_index=PAD_ID
        )[0]

    log["joint"] = fit_stage(
        model.parameters(), model, n, loss,
        epochs=cfg.joint_epochs if pretrained_rnn else cfg.rnn_epochs + cfg.joint_epochs,
        lr=cfg.joint_lr if pretrained_rnn else cfg.rnn_lr, seed=seed + 2, desc=f"{desc} joint",
        val_score=val_cider, **common,
    )  # fmt: skip
    return float(log["joint"]["best_val"]), log


def _vocab(corpus: Sentences, lang: str, cfg: SRNNCaptionerConfig) -> Vocab:
    return build_caption_vocab(
        segment_all([t for texts in corpus.values() for t in texts], lang), cfg.min_count
    )


def train_srnn_captioner(
    data: SplitData, manifest: Manifest, cfg: SRNNCaptionerConfig, seed: int, name: str = "s-cnn-rnn"
) -> tuple[Trained, dict[str, Any]]:
    """One S-CNN-RNN captioner on one split (the model of the best validation epoch), and what its concepts are."""
    dim = len(next(iter(data.features.values())))
    concepts = caption_concepts(manifest, cfg)
    zh_vocab = _vocab(data.zh["train"], "zh", cfg)
    history: dict[str, Any] = {}
    if not cfg.transfer:
        c_vocab, targets = concepts["zh"]
        model = _new_model(dim, len(c_vocab), zh_vocab, cfg, seed)
        best, history["zh"] = fit_captioner(
            model, zh_vocab, "zh", data, targets, cfg, seed, pretrain_concepts=True, desc="zh"
        )
    else:
        c_vocab, targets = concepts["en"]
        en_vocab = _vocab(data.en["train"], "en", cfg)
        en_model = _new_model(dim, len(c_vocab), en_vocab, cfg, seed)
        en_best, history["en"] = fit_captioner(
            en_model, en_vocab, "en", data, targets, cfg, seed, pretrain_concepts=True, desc="en"
        )
        history["en_best_val_cider"] = en_best
        model = _new_model(dim, len(c_vocab), zh_vocab, cfg, seed)
        model.concept.load_state_dict(
            en_model.concept.state_dict()
        )  # the concept model and W (s^ -> h0) kept
        model.decoder.init_h.load_state_dict(en_model.decoder.init_h.state_dict())
        best, history["zh"] = fit_captioner(
            model, zh_vocab, "zh", data, targets, cfg, seed, pretrain_concepts=False, desc="en->zh"
        )
    hist = [{"stage": f"{lang}/{stage}", **h} for lang, log in history.items() if isinstance(log, dict)
            for stage, entry in log.items() for h in entry["history"]]  # fmt: skip
    info = {"concepts": {"lang": "en" if cfg.transfer else "zh", "size": len(c_vocab)}}
    return Trained(name, model, zh_vocab, "zh", None, best, hist), info
