"""Region features for A3VSE: pixels -> a set of region vectors [B, N, C] (the paper's fixed F^v input).

The paper uses Faster R-CNN boxes (36 x 2048), which cannot be had offline. The extractor is pluggable:
- "efficientnet_lite0" (offline default): the backbone's last convolutional map (after conv_head/bn/swish), a 7 x 7
  grid of 1280-d cells = 49 regions. The mean of the cells is exactly the pooled backbone feature, so the bundle's
  `feature` output (L2-normalised mean) matches the W2VV feature cache.
- "open_clip" (real deployment): the ViT's patch tokens (`visual.output_tokens = True`), one region per patch.

Training reads regions from a disk cache filled once per (extractor, preprocessing, manifest): float16 .npy chunks
written atomically, so an interrupted extraction resumes at the first missing chunk.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlsearch.common.progress import progress as progress_bar
from xlsearch.data.manifest import Manifest
from xlsearch.encode.decode import decode_pixels
from xlsearch.encode.preprocess import ImageError, PreprocessConfig
from xlsearch_training.backbones import BackboneConfig, EfficientNetLite0Backbone, build_backbone

CACHE_FORMAT = 1


class RegionExtractor(nn.Module):
    """Interface: `forward(pixels [B,3,S,S]) -> regions [B,N,C]` (raw, not normalised, as in the paper)."""

    name: str
    dim: int  # C
    num_regions: int  # N
    preprocess: PreprocessConfig

    def forward(self, pixels: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def classifier(self) -> nn.Linear | None:
        """A linear ImageNet classifier over region/pooled vectors (for regional semantics), if the model has one."""
        return None


class GridRegions(RegionExtractor):
    """EfficientNet-Lite0's last conv map as a grid of regions (7 x 7 x 1280 at 224 px)."""

    def __init__(self, backbone: EfficientNetLite0Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.name = f"grid:{backbone.name}"
        self.dim = backbone.dim
        self.preprocess = backbone.preprocess
        cells = -(-self.preprocess.image_size // 32)  # stride-32 network with TF 'SAME' padding
        self.num_regions = cells * cells

    def forward(self, pixels: Tensor) -> Tensor:
        fmap = self.backbone.net.extract_features(pixels)  # [B, C, h, w]
        return fmap.flatten(2).transpose(1, 2)

    def classifier(self) -> nn.Linear:
        return self.backbone.net._fc


class PatchTokenRegions(RegionExtractor):
    """An open_clip ViT's patch tokens (pre-projection width) as regions; no classifier (semantics then need
    another concept source, e.g. zero-shot prompts)."""

    def __init__(self, model_name: str, pretrained: str | None) -> None:
        super().__init__()
        backbone = build_backbone(
            BackboneConfig(kind="open_clip", model_name=model_name, pretrained=pretrained)
        )
        self.visual = backbone.visual
        if not hasattr(self.visual, "output_tokens"):
            raise ValueError(f"open_clip model {model_name!r} has no patch tokens (not a ViT tower)")
        self.visual.output_tokens = True
        self.name = f"patches:{backbone.name}"
        self.preprocess = backbone.preprocess
        with torch.no_grad():
            s = self.preprocess.image_size
            tokens = self.forward(torch.zeros(1, 3, s, s))
        self.num_regions, self.dim = int(tokens.shape[1]), int(tokens.shape[2])

    def forward(self, pixels: Tensor) -> Tensor:
        _, tokens = self.visual(pixels)
        return tokens


def build_region_extractor(backbone: dict) -> RegionExtractor:
    """`backbone` is the pipeline's backbone dict ({"kind": "efficientnet_lite0"} or an open_clip spec)."""
    cfg = BackboneConfig.from_dict(backbone)
    if cfg.kind == "efficientnet_lite0":
        bb = build_backbone(cfg)
        assert isinstance(bb, EfficientNetLite0Backbone)
        return GridRegions(bb).eval()
    if cfg.kind == "open_clip":
        return PatchTokenRegions(cfg.model_name, cfg.pretrained).eval()
    raise ValueError(f"no region extractor for backbone kind {cfg.kind!r}")


def pooled_feature(regions: Tensor) -> Tensor:
    """The L2-normalised mean region = the normalised pooled backbone feature (the bundle's `feature` output)."""
    return F.normalize(regions.float().mean(dim=1), dim=-1)


# -- the region cache ----------------------------------------------------------------------------------------------
@dataclass
class RegionStore:
    """Region features of a set of images, in memory as float16 [N, R, C]."""

    ids: list[str]
    regions: np.ndarray
    skipped: list[dict[str, str]]

    def index(self) -> dict[str, int]:
        return {i: n for n, i in enumerate(self.ids)}

    def take(self, rows: Sequence[int] | np.ndarray) -> Tensor:
        return torch.from_numpy(self.regions[np.asarray(rows)].astype(np.float32))


def _cache_key(extractor: RegionExtractor, cfg: PreprocessConfig) -> str:
    h = hashlib.sha256(f"a3vse-regions-v{CACHE_FORMAT}\n{extractor.name}\n".encode())
    h.update(json.dumps(cfg.to_dict(), sort_keys=True).encode())
    return h.hexdigest()[:16]


def _ids_hash(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:12]


def _decode(path: Path, cfg: PreprocessConfig) -> np.ndarray | str:
    try:
        return decode_pixels(path, cfg)
    except ImageError as e:
        return str(e)


def extract_regions(
    manifest: Manifest,
    extractor: RegionExtractor,
    cache_dir: str | os.PathLike[str],
    chunk_size: int = 256,
    batch_size: int = 16,
    progress: bool = True,
) -> RegionStore:
    """Regions of every manifest image, extracted once and cached as float16 chunks (resumable)."""
    cfg = extractor.preprocess
    if cfg.crop != "center":
        raise ValueError("region features need a single centre crop")
    folder = Path(cache_dir) / _cache_key(extractor, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    items = [(r.id, manifest.image_path(r)) for r in manifest.records]
    spans = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)]
    ids: list[str] = []
    arrays: list[np.ndarray] = []
    skipped: list[dict[str, str]] = []
    bar = progress_bar(total=len(items), unit="img", desc="region features", disable=not progress)
    extractor.eval()
    with ThreadPoolExecutor(max_workers=2) as pool:
        for n, span in enumerate(spans):
            stem = folder / f"chunk_{n:05d}_{_ids_hash([i for i, _ in span])}"
            npy, meta = stem.with_suffix(".npy"), stem.with_suffix(".json")
            if npy.exists() and meta.exists():
                info = json.loads(meta.read_text())
                arrays.append(np.load(npy))
                ids += info["ids"]
                skipped += info["skipped"]
                bar.update(len(span))
                continue
            chunk_ids, chunk_regions, chunk_skipped = [], [], []
            for b in range(0, len(span), batch_size):
                part = span[b : b + batch_size]
                decoded = list(pool.map(lambda it: _decode(it[1], cfg), part))
                good = [(it, x) for it, x in zip(part, decoded, strict=True) if not isinstance(x, str)]
                chunk_skipped += [
                    {"id": it[0], "reason": x}
                    for it, x in zip(part, decoded, strict=True)
                    if isinstance(x, str)
                ]
                if good:
                    with torch.no_grad():
                        out = extractor(torch.from_numpy(np.stack([x for _, x in good])))
                    chunk_regions.append(out.numpy().astype(np.float16))
                    chunk_ids += [it[0] for it, _ in good]
                bar.update(len(part))
            shape = (0, extractor.num_regions, extractor.dim)
            block = np.concatenate(chunk_regions) if chunk_regions else np.zeros(shape, np.float16)
            tmp = npy.with_suffix(".tmp.npy")
            np.save(tmp, block)
            os.replace(tmp, npy)
            meta.write_text(json.dumps({"ids": chunk_ids, "skipped": chunk_skipped}))
            arrays.append(block)
            ids += chunk_ids
            skipped += chunk_skipped
    bar.close()
    regions = (
        np.concatenate(arrays) if arrays else np.zeros((0, extractor.num_regions, extractor.dim), np.float16)
    )
    return RegionStore(ids, regions, skipped)
