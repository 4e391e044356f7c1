"""Exact fusion over the whole collection (Fagin's threshold algorithm).

The top-D lists of both tables (image vectors for CM, caption vectors for CL) are merged, every candidate gets BOTH
scores exactly (dot products with the stored vectors) and the best fused candidates are kept. An eligible image
outside both lists has CL <= CL_D and CM <= CM_D (the D-th scores), so its fused score is at most
a*CL_D + (1-a)*CM_D. When the k-th fused candidate reaches that bound the answer is exact; otherwise D doubles (up
to the number of eligible images, where the lists are exhaustive). Exact only with exact (Flat) indexes; with
approximate ones the candidate lists are approximate but the returned scores are still exact rescorings.

Images without a caption: their CL score is imputed by their CM score (the image stands in for its missing
description), in every mode. So in CLM their fused score is CM, in CL they rank by CM. The bound accounts for them:
an uncaptioned image outside the image list scores at most CM_D.
"""

from __future__ import annotations

import numpy as np

from xlsearch.common.timing import StageTimer
from xlsearch.index.image_index import ImageIndex


def exact_topk(
    index: ImageIndex,
    q_cm: np.ndarray,
    q_cl: np.ndarray | None,
    a: float,
    k: int,
    eligible: np.ndarray | None,
    timer: StageTimer,
    initial_depth: int | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Exact top-k of the fused score ``a*CL + (1-a)*CM`` among eligible images (all when ``eligible`` is None):
    a structured array of (id, score, cl, cm), best first, and the loop's depth/rounds/candidates."""
    if eligible is None:
        n_eligible, n_uncaptioned = index.count, index.uncaptioned_count
    else:
        n_eligible = len(eligible)
        n_uncaptioned = int((~index.has_caption(eligible)).sum())
    n_captioned = n_eligible - n_uncaptioned
    need_img = a < 1.0 or n_uncaptioned > 0
    need_cap = a > 0.0 and n_captioned > 0
    # float32 search scores vs float64 rescoring of unit vectors differ by at most ~dim * 2^-24
    slack = max(index.dim, index.cl_dim) * 2.0**-24
    depth = initial_depth or max(4 * k, 64)
    depth, rounds = max(1, depth), 0
    q_cm64 = q_cm.astype(np.float64)
    q_cl64 = q_cl.astype(np.float64) if q_cl is not None else None
    while True:
        rounds += 1
        with timer("search"):
            img_s, img_i = index.search_images(q_cm, depth, eligible) if need_img else _empty()
            cap_s, cap_i = index.search_captions(q_cl, depth, eligible) if need_cap else _empty()
        with timer("fuse"):
            cand = np.union1d(img_i, cap_i)
            cm = index.image_vectors(cand).astype(np.float64) @ q_cm64
            has_cap = index.has_caption(cand)
            cl = cm.copy()  # imputation for uncaptioned images
            if has_cap.any() and a > 0.0:
                cl[has_cap] = index.caption_vectors(cand[has_cap]).astype(np.float64) @ q_cl64
            fused = cm if a == 0.0 else cl if a == 1.0 else a * cl + (1.0 - a) * cm
            order = np.lexsort((cand, -fused))[:k]  # ties: lower int id (earlier insertion) first
            img_done = not need_img or len(img_i) < depth
            cap_done = not need_cap or len(cap_i) < depth
            bound = _outside_bound(a, img_s, cap_s, img_done, cap_done, n_captioned, n_uncaptioned)
            kth = fused[order[-1]] if len(order) == k else -np.inf
            done = bound == -np.inf or kth >= bound + slack or depth >= n_eligible
        if done:
            break
        depth = min(2 * depth, n_eligible)
    ranked = np.zeros(len(order), dtype=[("id", np.int64), ("score", float), ("cl", float), ("cm", float)])
    ranked["id"], ranked["score"], ranked["cl"], ranked["cm"] = (
        cand[order],
        fused[order],
        cl[order],
        cm[order],
    )
    if a == 0.0 and q_cl64 is not None:  # CL was not needed for ranking; report it for captioned hits
        hc = has_cap[order]
        if hc.any():
            ranked["cl"][hc] = index.caption_vectors(ranked["id"][hc]).astype(np.float64) @ q_cl64
    return ranked, {"depth": int(depth), "rounds": rounds, "candidates": len(cand)}


def _outside_bound(
    a: float,
    img_s: np.ndarray,
    cap_s: np.ndarray,
    img_done: bool,
    cap_done: bool,
    n_captioned: int,
    n_uncaptioned: int,
) -> float:
    """Upper bound of the fused score of any eligible image in neither list (-inf: there is none).

    A list is "done" when it holds every eligible image of its table (it returned fewer than D)."""
    if img_done and (a < 1.0 or n_uncaptioned > 0):
        return -np.inf  # the image list covers every eligible image
    cm_d = float(img_s[-1]) if len(img_s) else -np.inf
    cl_d = float(cap_s[-1]) if len(cap_s) else -np.inf
    bounds = []
    if n_captioned and not cap_done:  # captioned images may hide outside the caption list
        bounds.append(cm_d if a == 0.0 else cl_d if a == 1.0 else a * cl_d + (1.0 - a) * cm_d)
    elif n_captioned and a == 0.0:
        bounds.append(cm_d)
    if n_uncaptioned:  # imputed CL = CM, so fused = CM <= CM_D
        bounds.append(cm_d)
    return max(bounds, default=-np.inf)


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, np.float32), np.zeros(0, np.int64)


def page_of(
    ranked: np.ndarray, offset: int, top_k: int, min_score: float | None, exclude: int | None
) -> tuple[np.ndarray, bool]:
    """One page of an exact ranking (best first) of at least ``offset + top_k + 1`` images (+1 with ``exclude``):
    without the excluded int id, without hits scoring below ``min_score``, ranks offset+1 .. offset+top_k; and
    whether hits follow the page. Ranked exactly, so page n+1 starts where page n ended."""
    if exclude is not None:
        ranked = ranked[ranked["id"] != exclude]
    if min_score is not None:
        ranked = ranked[ranked["score"] >= min_score]  # a prefix: the ranking is by score
    return ranked[offset : offset + top_k], len(ranked) > offset + top_k
