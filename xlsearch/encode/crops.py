"""Crops in and out of an image encoder: [B,crops,3,H,W] pixels run as one flat batch, and the one crop average
(COCO-CN's 10-crop oversampling: the mean of the crops' vectors, L2-normalised again when the encoder's outputs are
unit vectors)."""

from __future__ import annotations

import numpy as np


def flat_crops(pixels: np.ndarray) -> np.ndarray:
    """[B,3,H,W] or [B,crops,3,H,W] -> a contiguous float32 [B*crops,3,H,W] batch."""
    return np.ascontiguousarray(pixels.reshape(-1, *pixels.shape[-3:]), dtype=np.float32)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def crop_mean(vectors: np.ndarray, n: int, renormalize: bool = True) -> np.ndarray:
    """[n*crops, D] encoder outputs of ``n`` images -> [n, D]: the mean over each image's crops."""
    mean = vectors.reshape(n, -1, vectors.shape[-1]).mean(axis=1)
    return l2_normalize(mean) if renormalize else mean
