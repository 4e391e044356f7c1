"""Offline retrieval benchmark (torch-free): MRR and R@K for CL, CM and CLM on a manifest's test split.

Protocol (COCO-CN Sec. IV-D): every test-split Chinese sentence is a query; its image is the single relevant item;
candidates are the test images, each described by its first English sentence. The fusion weight a is chosen on the
validation split (grid over [0, 1], step 0.01, maximising MRR) and applied to the test split. CL is reported both in
the visual space (W2VV zh vs W2VV en) and in the pretrained sentence space (e5 query vs e5 passage: the zero-shot
peer baseline, untouched by training).

Image-to-text (row "CM i2t"): every test image is a query over the test split's Chinese sentences (the CM scores
transposed); its relevant items are its own sentences and its rank is that of the best-ranked one. MRR and R@K are
reported for both directions (the "CM" row is text-to-image).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xlsearch.bundle.runtime import Bundle
from xlsearch.data.manifest import Manifest, Record
from xlsearch.eval.fusion import choose_alpha, choose_fusion, choose_simplex, fuse, simplex_fusion
from xlsearch.eval.metrics import retrieval_metrics, summarize_ranks
from xlsearch.eval.query_kinds import english_rows, image_to_image_rows

KS = (1, 5, 10)


@dataclass
class QuerySet:
    """Queries, candidates and the index of each query's relevant candidate."""

    queries: list[str]
    relevant: np.ndarray
    candidate_ids: list[str]
    captions: list[str]


def build_query_set(records: list[Record], candidates: list[Record] | None = None) -> QuerySet:
    """Queries from `records`' Chinese sentences; candidates default to the same images (first English sentence)."""
    candidates = candidates if candidates is not None else records
    candidates = [r for r in candidates if r.en]
    pos = {r.id: i for i, r in enumerate(candidates)}
    queries, relevant = [], []
    for r in records:
        if r.id not in pos:
            continue
        for s in r.zh:
            queries.append(s)
            relevant.append(pos[r.id])
    return QuerySet(
        queries,
        np.asarray(relevant, dtype=np.int64),
        [r.id for r in candidates],
        [r.en[0] for r in candidates],
    )


@dataclass
class Scores:
    cm: np.ndarray  # [Q, N] query (zh W2VV) vs image
    cl_visual: np.ndarray  # [Q, N] query (zh W2VV) vs caption (en W2VV)
    cl_sentence: np.ndarray | None  # [Q, N] e5 query vs e5 passage (None without a sentence encoder)


def score(bundle: Bundle, qs: QuerySet, image_vectors: dict[str, np.ndarray]) -> Scores:
    has_sentence = bundle.manifest.sentence_encoder is not None
    q_sent = bundle.sentence_embeddings(qs.queries, "zh") if has_sentence else None
    c_sent = bundle.sentence_embeddings(qs.captions, "en") if has_sentence else None
    q = bundle.encode_texts(qs.queries, "zh", q_sent if bundle.uses_sentence("zh") else None)
    c = bundle.encode_texts(qs.captions, "en", c_sent if bundle.uses_sentence("en") else None)
    v = np.stack([image_vectors[i] for i in qs.candidate_ids])
    cl_sentence = q_sent @ c_sent.T if q_sent is not None and c_sent is not None else None
    return Scores(cm=q @ v.T, cl_visual=q @ c.T, cl_sentence=cl_sentence)


def image_to_text_ranks(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Ranks for image -> sentence retrieval from sentence x image scores [Q, N] and each sentence's image [Q].

    Images with no sentence are not queries. The rank is the expected 1-based position of the first relevant
    sentence when ties are broken at random: with g non-relevant sentences strictly better, t_n non-relevant and t_r
    relevant ones tied at the best relevant score, it is g + 1 + t_n / (t_r + 1) (equal to `expected_ranks` when
    each image has one sentence)."""
    scores = np.asarray(scores)
    relevant = np.asarray(relevant, dtype=np.int64)
    ranks = []
    for image in np.unique(relevant):
        column = scores[:, image]
        is_rel = relevant == image
        target = column[is_rel].max()
        better = int((column > target).sum())
        tied_rel = int((column[is_rel] == target).sum())
        tied_other = int(((column == target) & ~is_rel).sum())
        ranks.append(better + 1 + tied_other / (tied_rel + 1))
    return np.asarray(ranks, dtype=np.float64)


def image_to_text_metrics(scores: np.ndarray, relevant: np.ndarray, ks=KS) -> dict[str, float]:
    return summarize_ranks(image_to_text_ranks(scores, relevant), ks)


def evaluate(
    bundle: Bundle,
    manifest: Manifest,
    image_vectors: dict[str, np.ndarray],
    step: float = 0.01,
    rule: str = "1se",
    prior: tuple[float, float, float] = (0.0, 1.0, 0.0),
) -> dict:
    """Rows of metrics for one (manifest, bundle): CL in each space, CM, CLM per CL space, and CLM against all
    images as candidates. Alpha comes from the validation split. "CLM served" is what the bundle serves: CL visual,
    CL e5 and CM weighted on the simplex, chosen on validation by `choose_simplex` with ``rule`` / ``prior`` (weights
    of CL visual, CL e5, CM; the default prior is zero-shot e5), returned as ``fusion`` (a manifest section)."""
    val_qs = build_query_set(manifest.split("val"))
    val = score(bundle, val_qs, image_vectors)
    val_rel = val_qs.relevant
    test_qs = build_query_set(manifest.split("test"))
    test = score(bundle, test_qs, image_vectors)
    all_qs = build_query_set(manifest.split("test"), list(manifest.records))
    every = score(bundle, all_qs, image_vectors)

    rows: dict[str, dict] = {}
    rows["CM"] = retrieval_metrics(test.cm, test_qs.relevant, KS)
    rows["CM i2t"] = image_to_text_metrics(test.cm, test_qs.relevant, KS)
    spaces = {"visual": (val.cl_visual, test.cl_visual, every.cl_visual)}
    if test.cl_sentence is not None:
        spaces["sentence"] = (val.cl_sentence, test.cl_sentence, every.cl_sentence)
    alphas = {}
    for space, (cl_val, cl_test, cl_all) in spaces.items():
        alpha, val_mrr = choose_alpha(cl_val, val.cm, val_rel, step)
        alphas[space] = {"alpha": alpha, "val_mrr": val_mrr}
        rows[f"CL[{space}]"] = retrieval_metrics(cl_test, test_qs.relevant, KS)
        rows[f"CLM[{space}]"] = dict(
            retrieval_metrics(fuse(cl_test, test.cm, alpha), test_qs.relevant, KS), alpha=alpha
        )
        rows[f"CLM[{space}] all images"] = dict(
            retrieval_metrics(fuse(cl_all, every.cm, alpha), all_qs.relevant, KS), alpha=alpha
        )
    rows["CM all images"] = retrieval_metrics(every.cm, all_qs.relevant, KS)
    rows.update(
        english_rows(bundle, manifest, image_vectors, alphas)
    )  # the other query kinds (query_kinds.py)
    rows.update(image_to_image_rows(manifest, image_vectors))
    if test.cl_sentence is not None:  # served: CL visual, CL e5 and CM weighted on the simplex
        w, val_mrr, eligible = choose_simplex(val.cl_visual, val.cl_sentence, val.cm, val_rel, rule, prior)
        fusion = simplex_fusion(w, val_mrr, rule, eligible)
        served = w[0] * test.cl_visual + w[1] * test.cl_sentence + w[2] * test.cm
    else:
        choice = choose_fusion({"visual": val.cl_visual}, val.cm, val_rel, "best", None, step)
        fusion = choice.to_fusion()
        served = fuse(test.cl_visual, test.cm, choice.alpha)
    rows["CLM served"] = dict(
        retrieval_metrics(served, test_qs.relevant, KS), alpha=fusion["alpha"], cl_space=fusion["cl_space"]
    )
    return {
        "rows": rows,
        "alphas": alphas,
        "fusion": fusion,
        "candidates": len(test_qs.candidate_ids),
        "candidates_all": len(all_qs.candidate_ids),
        "queries": len(test_qs.queries),
        "bundle": bundle.content_hash,
    }
