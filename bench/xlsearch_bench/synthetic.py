"""The scale benchmark's collection: the real index's (image, caption) vectors first, then synthetic rows from a
seeded joint Gaussian mixture around them (``Synthetic``), served in batches (``Collection``); and the brute-force
ground truth over every row (``TopK``, ``ground_truth``) that recall is measured against."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

# Synthetic rows are generated (and seeded) in fixed blocks, so the data does not depend on the batching.
SYNTHETIC_BLOCK = 10_000


class Synthetic:
    """Synthetic (image, caption) vector pairs around the real ones: a seeded joint Gaussian mixture.

    Component j is the real pair (image_j, caption_j) concatenated ([dim + cl_dim]); every component shares one
    covariance, ``spread**2`` times the empirical covariance of the real pairs restricted to its top ``rank``
    principal directions. A row picks a component uniformly, adds the correlated noise, and each half is
    L2-normalised. So synthetic images are noisy variants of real ones that keep the real data's anisotropy (e.g.
    e5 caption vectors' high mutual cosines) and the image-caption correlation across the collection. Rows are
    generated in blocks of ``SYNTHETIC_BLOCK`` seeded by (seed, block), so row r is the same whatever the batching
    and a smaller size is a prefix of a larger one.
    """

    def __init__(self, img: np.ndarray, cap: np.ndarray, seed: int = 0, spread: float = 0.5, rank: int = 256):
        self.dim, self.cl_dim = img.shape[1], cap.shape[1]
        self.joint = np.ascontiguousarray(np.hstack([img, cap]), np.float32)
        x0 = self.joint.astype(np.float64) - self.joint.mean(axis=0)
        _, s, vt = np.linalg.svd(x0, full_matrices=False)
        r = max(1, min(rank, len(s)))
        self.rank = r
        self.explained = float((s[:r] ** 2).sum() / max((s**2).sum(), 1e-30))
        self.factor = np.ascontiguousarray(
            (s[:r, None] / math.sqrt(max(len(img) - 1, 1))) * vt[:r], np.float32
        )
        self.seed, self.spread = seed, spread

    def describe(self) -> dict[str, Any]:
        return {
            "model": "joint Gaussian mixture around the real (image, caption) pairs, shared low-rank empirical "
            "covariance, each half L2-normalised",
            "components": len(self.joint),
            "spread": self.spread,
            "rank": self.rank,
            "variance_explained_by_rank": self.explained,
            "seed": self.seed,
            "block": SYNTHETIC_BLOCK,
        }

    def block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, b])
        comp = rng.integers(0, len(self.joint), SYNTHETIC_BLOCK)
        z = rng.standard_normal((SYNTHETIC_BLOCK, self.rank), dtype=np.float32)
        x = self.joint[comp]
        x += self.spread * (z @ self.factor)
        img, cap = x[:, : self.dim], x[:, self.dim :]
        img /= np.maximum(np.linalg.norm(img, axis=1, keepdims=True), 1e-12)
        cap /= np.maximum(np.linalg.norm(cap, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(img), np.ascontiguousarray(cap)

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Synthetic rows [start, stop) (0 = the first synthetic row)."""
        parts_i, parts_c = [], []
        b = start // SYNTHETIC_BLOCK
        while b * SYNTHETIC_BLOCK < stop:
            img, cap = self.block(b)
            lo, hi = max(start - b * SYNTHETIC_BLOCK, 0), min(stop - b * SYNTHETIC_BLOCK, SYNTHETIC_BLOCK)
            parts_i.append(img[lo:hi])
            parts_c.append(cap[lo:hi])
            b += 1
        return np.concatenate(parts_i), np.concatenate(parts_c)


@dataclass
class RealData:
    ids: list[str]
    img: np.ndarray
    cap: np.ndarray  # zeros for uncaptioned rows
    has_cap: np.ndarray
    metas: list[Any]

    @classmethod
    def of(cls, index: Any) -> RealData:
        int_ids = index.int_ids()
        img = index.image_vectors(int_ids)
        has = index.has_caption(int_ids)
        cap = np.zeros((len(int_ids), index.cl_dim), np.float32)
        if has.any():
            cap[has] = index.caption_vectors(int_ids[has])
        metas = index.metadata(int_ids)
        return cls([m.id for m in metas], img, cap, has, metas)


class Collection:
    """Rows 0..n-1: the real rows first, then synthetic rows. ``batches`` yields (start, metas, img, cap, has_cap);
    the first batch holds at least ``first`` rows (IVF tables are trained on the first vectors added)."""

    def __init__(self, real: RealData, synthetic: Synthetic | None, n: int):
        self.real, self.synthetic, self.n = real, synthetic, n
        self.n_real = min(n, len(real.ids))
        if n > self.n_real and synthetic is None:
            raise ValueError("synthetic rows needed but no generator")
        self.gen_seconds = 0.0

    def row_id(self, row: int) -> str:
        return self.real.ids[row] if row < self.n_real else f"syn-{row:07d}"

    def batches(
        self, chunk: int, first: int
    ) -> Iterator[tuple[int, list[Any], np.ndarray, np.ndarray, np.ndarray]]:
        from xlsearch.index.image_index import ImageMeta

        start = 0
        while start < self.n:
            stop = min(self.n, start + (max(chunk, first) if start == 0 else chunk))
            t0 = time.perf_counter()
            img_parts, cap_parts, has_parts, metas = [], [], [], []
            if start < self.n_real:
                hi = min(stop, self.n_real)
                img_parts.append(self.real.img[start:hi])
                cap_parts.append(self.real.cap[start:hi])
                has_parts.append(self.real.has_cap[start:hi])
                metas += self.real.metas[start:hi]
            lo = max(start, self.n_real)
            if stop > lo:
                img, cap = self.synthetic.rows(lo - self.n_real, stop - self.n_real)
                img_parts.append(img)
                cap_parts.append(cap)
                has_parts.append(np.ones(stop - lo, bool))
                metas += [ImageMeta(f"syn-{r:07d}", "", ("synthetic caption",)) for r in range(lo, stop)]
            img = np.concatenate(img_parts) if len(img_parts) > 1 else img_parts[0]
            cap = np.concatenate(cap_parts) if len(cap_parts) > 1 else cap_parts[0]
            has = np.concatenate(has_parts)
            self.gen_seconds += time.perf_counter() - t0
            yield start, metas, img, cap, has
            start = stop


class TopK:
    """Running top-k rows per query (score descending, lower row first on ties)."""

    def __init__(self, n_queries: int, k: int):
        self.k = k
        self.scores = np.full((n_queries, k), -np.inf, np.float32)
        self.rows = np.full((n_queries, k), -1, np.int64)

    def update(self, scores: np.ndarray, start: int) -> None:
        """``scores`` [n_queries, n_chunk] of rows start.. start+n_chunk-1."""
        k = min(self.k, scores.shape[1])
        part = (
            np.argpartition(-scores, k - 1, axis=1)[:, :k]
            if scores.shape[1] > k
            else np.tile(np.arange(scores.shape[1]), (scores.shape[0], 1))
        )
        s = np.concatenate([self.scores, np.take_along_axis(scores, part, axis=1)], axis=1)
        r = np.concatenate([self.rows, part + start], axis=1)
        order = np.lexsort((r, -s), axis=1)[:, : self.k]
        self.scores, self.rows = np.take_along_axis(s, order, axis=1), np.take_along_axis(r, order, axis=1)


def ground_truth(
    coll: Collection, q_cm: np.ndarray, q_cl: np.ndarray, alpha: float, k: int, chunk: int
) -> dict[str, TopK]:
    """Brute force top-k over every row: fused CLM (CL imputed by CM without a caption), CM alone, CL alone."""
    tops = {name: TopK(len(q_cm), k) for name in ("fused", "images", "captions")}
    for start, _, img, cap, has in coll.batches(chunk, 0):
        cm = q_cm @ img.T
        cl = q_cl @ cap.T
        tops["images"].update(cm, start)
        cl_cap = np.where(has[None, :], cl, -np.inf).astype(np.float32)
        tops["captions"].update(cl_cap, start)
        cl_imp = np.where(has[None, :], cl, cm)
        tops["fused"].update((alpha * cl_imp + (1.0 - alpha) * cm).astype(np.float32), start)
    return tops
