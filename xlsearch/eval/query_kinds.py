"""Benchmark rows for the other kinds of query the service takes (issue 12), next to the Chinese-text rows of
``xlsearch.eval.benchmark``:

- **English queries** ("... en queries"): every test-split English sentence is a query, encoded exactly as the
  server encodes any query (the zh-side encoders: W2VV zh tokens + the multilingual e5 query embedding), against
  the test images; CLM uses the alpha chosen on the Chinese validation queries (what the server serves). On Tux
  Paint an image's English sentence is also its caption, so CL is near its ceiling by construction: the CM row is
  the informative one.
- **Image-to-image** ("CM i2i (same caption)"): search by image ranks every other image by the cosine of their
  image vectors (the engine's CM with the image vector as the query). Relevance, where the data allows it: the
  other images with the same first English sentence (normalised: case and punctuation), e.g. the several "A
  frog." stamps. Queries: the test-split images that share their sentence with at least one other image;
  candidates: every image but the query itself; the rank is that of the best-ranked relevant image (ties at their
  expected position).
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import numpy as np

from xlsearch.data.manifest import Manifest, Record
from xlsearch.eval.fusion import fuse
from xlsearch.eval.metrics import retrieval_metrics, summarize_ranks

KS = (1, 5, 10)


def english_queries(records: list[Record]) -> tuple[list[str], np.ndarray, list[Record]]:
    """(queries, index of each query's image among the candidates, candidates): English sentences as queries."""
    candidates = [r for r in records if r.en]
    queries, relevant = [], []
    for n, r in enumerate(candidates):
        for s in r.en:
            queries.append(s)
            relevant.append(n)
    return queries, np.asarray(relevant, dtype=np.int64), candidates


def english_rows(
    bundle: Any, manifest: Manifest, image_vectors: dict[str, np.ndarray], alphas: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    queries, relevant, candidates = english_queries(manifest.split("test"))
    if not queries:
        return {}
    has_sentence = bundle.manifest.sentence_encoder is not None
    captions = [r.en[0] for r in candidates]
    q_sent = bundle.sentence_embeddings(queries, "zh") if has_sentence else None  # the server's query path
    c_sent = bundle.sentence_embeddings(captions, "en") if has_sentence else None
    q = bundle.encode_texts(queries, "zh", q_sent if bundle.uses_sentence("zh") else None)
    c = bundle.encode_texts(captions, "en", c_sent if bundle.uses_sentence("en") else None)
    v = np.stack([image_vectors[r.id] for r in candidates])
    cm = q @ v.T
    spaces = {"visual": q @ c.T}
    if q_sent is not None and c_sent is not None:
        spaces["sentence"] = q_sent @ c_sent.T
    rows: dict[str, dict[str, float]] = {"CM en queries": retrieval_metrics(cm, relevant, KS)}
    for space, cl in spaces.items():
        rows[f"CL[{space}] en queries"] = retrieval_metrics(cl, relevant, KS)
        if space in alphas:
            alpha = float(alphas[space]["alpha"])
            rows[f"CLM[{space}] en queries"] = dict(
                retrieval_metrics(fuse(cl, cm, alpha), relevant, KS), alpha=alpha
            )
    return rows


def sentence_key(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def image_to_image_ranks(vectors: np.ndarray, groups: list[str], queries: list[int]) -> np.ndarray:
    """Rank of the best relevant image (same group, not the query) for each query image, over all other images."""
    sims = vectors[queries] @ vectors.T  # [Q, N]
    groups_arr = np.asarray(groups)
    ranks = []
    for row, qi in zip(sims, queries, strict=True):
        others = np.arange(len(groups)) != qi
        rel = (groups_arr == groups[qi]) & others
        target = row[rel].max()
        better = int(((row > target) & others & ~rel).sum())
        tied_other = int(((row == target) & others & ~rel).sum())
        tied_rel = int((row[rel] == target).sum())
        ranks.append(better + 1 + tied_other / (tied_rel + 1))
    return np.asarray(ranks, dtype=np.float64)


def image_to_image_rows(
    manifest: Manifest, image_vectors: dict[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    records = [r for r in manifest.records if r.en and r.id in image_vectors]
    groups = [sentence_key(r.en[0]) for r in records]
    members: dict[str, int] = defaultdict(int)
    for g in groups:
        members[g] += 1
    queries = [n for n, r in enumerate(records) if r.split == "test" and members[groups[n]] > 1]
    if not queries:
        return {}
    vectors = np.stack([image_vectors[r.id] for r in records]).astype(np.float64)
    metrics = summarize_ranks(image_to_image_ranks(vectors, groups, queries), KS)
    return {"CM i2i (same caption)": dict(metrics, candidates=len(records) - 1)}
