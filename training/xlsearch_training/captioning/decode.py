"""Decoding a PyTorch captioner through the serving side's beam search, and scoring its sentences (CIDEr-D and
the other metrics) against a split's references."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from xlsearch.bundle.captioner import beam_search
from xlsearch.encode.text import Vocab
from xlsearch.eval.caption_metrics import score_captions
from xlsearch_training.captioning.config import CaptionerConfig
from xlsearch_training.captioning.corpora import Sentences
from xlsearch_training.captioning.model import ShowAndTell
from xlsearch_training.captioning.vocab import BOS_ID, EOS_ID


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
