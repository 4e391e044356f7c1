"""Caption metrics (torch-free): BLEU-1..4, ROUGE-L and CIDEr-D, computed exactly as the COCO caption evaluation
tool (pycocoevalcap) computes them, on token lists. Chinese sentences are segmented with jieba (the same
`ChineseTokenizer` for references and generated sentences), English with the `EnglishTokenizer`.

    score_captions({"img1": ["一只青蛙。"]}, {"img1": "青蛙"})  ->  {"BLEU-1": ..., "ROUGE-L": ..., "CIDEr-D": ...}

Conventions of the tool kept on purpose: BLEU is corpus-level with the "closest" reference length and the tool's
smoothing constants; ROUGE-L is the mean over images of the LCS F-measure (beta 1.2, best precision and best recall
over the references); CIDEr-D uses document frequencies over the evaluated references, clipped tf-idf, the gaussian
length penalty (sigma 6, length = number of bigrams, as in the tool) and the factor 10.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

from xlsearch.encode.text import Tokenizer, tokenizer_for

__all__ = ["METRICS", "bleu", "cider_d", "rouge_l", "score_captions", "score_tokens", "segment"]

METRICS: tuple[str, ...] = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D")
_TOKENIZERS: dict[str, Tokenizer] = {}

Tokens = Sequence[str]


def segment(text: str, lang: str = "zh") -> list[str]:
    """Tokens of a sentence as the metrics see them (jieba for zh, regex words for en; punctuation dropped)."""
    if lang not in _TOKENIZERS:
        _TOKENIZERS[lang] = tokenizer_for(lang)
    return _TOKENIZERS[lang].tokenize(text)


def _ngrams(tokens: Tokens, n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + k]) for k in range(1, n + 1) for i in range(len(tokens) - k + 1))


def _check(refs: Mapping[str, Sequence[Tokens]], hyps: Mapping[str, Tokens]) -> list[str]:
    if set(refs) != set(hyps):
        raise ValueError("references and hypotheses must cover the same image ids")
    if not refs:
        raise ValueError("nothing to score")
    for key, sentences in refs.items():
        if not sentences:
            raise ValueError(f"image {key!r} has no reference sentence")
    return list(refs)


def bleu(refs: Mapping[str, Sequence[Tokens]], hyps: Mapping[str, Tokens], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n (pycocoevalcap's BleuScorer with option "closest")."""
    small, tiny = 1e-9, 1e-15
    test_len = ref_len = 0
    guess, correct = [0] * n, [0] * n
    for key in _check(refs, hyps):
        hyp = list(hyps[key])
        max_counts: Counter[tuple[str, ...]] = Counter()
        for ref in refs[key]:
            for gram, count in _ngrams(list(ref), n).items():
                max_counts[gram] = max(max_counts[gram], count)
        lengths = [len(ref) for ref in refs[key]]
        test_len += len(hyp)
        ref_len += min((abs(length - len(hyp)), length) for length in lengths)[1]
        for k in range(n):
            guess[k] += max(0, len(hyp) - k)
        for gram, count in _ngrams(hyp, n).items():
            correct[len(gram) - 1] += min(max_counts.get(gram, 0), count)
    scores, product = [], 1.0
    for k in range(n):
        product *= (correct[k] + tiny) / (guess[k] + small)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_len + tiny) / (ref_len + small)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def _lcs(a: Tokens, b: Tokens) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(refs: Mapping[str, Sequence[Tokens]], hyps: Mapping[str, Tokens], beta: float = 1.2) -> float:
    """Mean over images of the ROUGE-L F-measure (max precision and max recall over the references)."""
    scores = []
    for key in _check(refs, hyps):
        hyp = list(hyps[key]) or [""]  # the tool splits "" into [""]: an empty hypothesis has length 1
        precision = recall = 0.0
        for ref in refs[key]:
            ref = list(ref) or [""]
            lcs = _lcs(ref, hyp)
            precision, recall = max(precision, lcs / len(hyp)), max(recall, lcs / len(ref))
        if precision and recall:
            scores.append((1 + beta**2) * precision * recall / (recall + beta**2 * precision))
        else:
            scores.append(0.0)
    return sum(scores) / len(scores)


def cider_d(
    refs: Mapping[str, Sequence[Tokens]], hyps: Mapping[str, Tokens], n: int = 4, sigma: float = 6.0
) -> float:
    """Mean CIDEr-D over images (pycocoevalcap's CiderScorer)."""
    keys = _check(refs, hyps)
    ref_counts = {key: [_ngrams(list(r), n) for r in refs[key]] for key in keys}
    doc_freq: Counter[tuple[str, ...]] = Counter()
    for counts in ref_counts.values():
        doc_freq.update({gram for c in counts for gram in c})
    log_docs = math.log(len(keys))

    def vectorise(counts: Counter[tuple[str, ...]]) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            vec[k][gram] = tf * (log_docs - math.log(max(1.0, doc_freq[gram])))
            norm[k] += vec[k][gram] ** 2
            if k == 1:
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    total = 0.0
    for key in keys:
        vec, norm, length = vectorise(_ngrams(list(hyps[key]), n))
        score = [0.0] * n
        for counts in ref_counts[key]:
            vec_ref, norm_ref, length_ref = vectorise(counts)
            penalty = math.exp(-((length - length_ref) ** 2) / (2 * sigma**2))
            for k in range(n):
                val = sum(min(w, vec_ref[k].get(g, 0.0)) * vec_ref[k].get(g, 0.0) for g, w in vec[k].items())
                if norm[k] and norm_ref[k]:
                    val /= norm[k] * norm_ref[k]
                score[k] += val * penalty
        total += 10.0 * (sum(score) / n) / len(ref_counts[key])
    return total / len(keys)


def score_tokens(refs: Mapping[str, Sequence[Tokens]], hyps: Mapping[str, Tokens]) -> dict[str, float]:
    """All of METRICS (as fractions, not percentages) on already segmented sentences."""
    b = bleu(refs, hyps)
    return {
        **{f"BLEU-{k + 1}": b[k] for k in range(4)},
        "ROUGE-L": rouge_l(refs, hyps),
        "CIDEr-D": cider_d(refs, hyps),
    }


def score_captions(
    refs: Mapping[str, Sequence[str]], hyps: Mapping[str, str], lang: str = "zh"
) -> dict[str, float]:
    """All of METRICS for raw sentences: references and hypotheses are segmented identically."""
    return score_tokens(
        {k: [segment(s, lang) for s in v] for k, v in refs.items()},
        {k: segment(v, lang) for k, v in hyps.items()},
    )
