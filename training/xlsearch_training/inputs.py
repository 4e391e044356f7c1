"""The inputs every experiment shares, each cached on disk: the dataset manifest (Tux Paint is built if absent),
the frozen backbone exported to ONNX once per backbone config, the image features of every manifest image, the e5
sentence vectors, and the seeded splits; plus the run-folder name of a variant (``slug``).

The retrieval pipeline (``w2vv.pipeline``) runs these as its stages 1-4; the tagging, captioning and A3VSE
experiments reuse a retrieval run's backbone and feature cache through them.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xlsearch.data.datasets.tuxpaint import convert_tuxpaint
from xlsearch.data.manifest import Manifest, read_manifest, resplit_manifest
from xlsearch.encode.features import extract_features
from xlsearch.encode.preprocess import PreprocessConfig
from xlsearch.encode.sentence import build_sentence_encoder, cached_encode
from xlsearch_training.backbones import BackboneConfig, build_backbone
from xlsearch_training.export import ImageEncoderHead, export_image_encoder

__all__ = [
    "Backbone",
    "ensure_backbone",
    "ensure_dataset",
    "image_vectors",
    "parse_seeds",
    "seed_folder",
    "seeded_split",
    "sentence_vectors",
    "split_for",
    "slug",
]


@dataclass
class Backbone:
    module: torch.nn.Module  # the frozen backbone (torch), reused by every bundle's image encoder
    onnx: Path  # backbone + L2 normalisation, for feature extraction
    spec: dict[str, Any]  # dim, preprocess, backbone


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def parse_seeds(seeds: str) -> list[int]:
    """ "0,1,2" -> [0, 1, 2] (the --seeds option of every experiment command)."""
    return [int(s) for s in seeds.split(",") if s.strip()]


def ensure_dataset(data: Path, stamps_root: str | None) -> Manifest:
    """The manifest in ``data``; the Tux Paint one is built there first when it is absent. (The commands number
    their own steps: nothing here prints a step label.)"""
    if not (data / "manifest.jsonl").exists():
        print(f"      building the Tux Paint manifest in {data}")
        kwargs = {"stamps_root": stamps_root} if stamps_root else {}
        convert_tuxpaint(data, seed=0, **kwargs)
    else:
        print(f"      manifest {data / 'manifest.jsonl'} exists")
    return read_manifest(data)


def seeded_split(data: Path, runs: Path, seed: int) -> Manifest:
    """The manifest of ``data`` re-split with ``seed``, kept in ``runs/splits/seed<N>`` (made once)."""
    split_dir = runs / "splits" / f"seed{seed}"
    if not (split_dir / "manifest.jsonl").exists():
        resplit_manifest(data, split_dir, seed)
    return read_manifest(split_dir)


SPLITS = ("seeded", "manifest")


def split_for(data: Path, runs: Path, seed: int, split: str = "seeded") -> Manifest:
    """The train/val/test split a seed trains on: ``seeded`` re-splits ``data`` with the seed (``seeded_split``);
    ``manifest`` keeps the manifest's own ``split`` field (the seed then only seeds the training)."""
    if split == "manifest":
        return read_manifest(data)
    if split != "seeded":
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return seeded_split(data, runs, seed)


def seed_folder(runs: Path, seed: int, split: str = "seeded") -> Path:
    """Where a seed's runs go: ``<runs>/seed<N>`` on seeded splits, ``<runs>/manifest-split/seed<N>`` on the
    manifest's own split (so results of the two never mix)."""
    return runs / f"seed{seed}" if split == "seeded" else runs / "manifest-split" / f"seed{seed}"


_REPORTED: set[Path] = set()  # backbone folders already named on stdout in this process


def ensure_backbone(runs: Path, backbone: dict[str, Any], crop: str) -> Backbone:
    """Build the backbone; export it (+ L2 normalisation) to ONNX once per backbone config."""
    folder = runs / "image_encoder" / slug(json.dumps(backbone, sort_keys=True) + crop)
    spec_path = folder / "spec.json"
    bb = build_backbone(BackboneConfig.from_dict(backbone))
    if spec_path.exists():
        if folder not in _REPORTED:
            print(f"      backbone {folder} exists")
            _REPORTED.add(folder)
        return Backbone(bb, folder / "image_encoder.onnx", json.loads(spec_path.read_text()))
    print(f"      exporting the backbone {backbone} to ONNX")
    _REPORTED.add(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pre = dataclasses.replace(bb.preprocess, crop=crop)
    export_image_encoder(
        ImageEncoderHead(bb, center=None, normalize=True).eval(),
        folder / "image_encoder.onnx",
        image_size=pre.image_size,
    )
    spec = {"dim": bb.dim, "preprocess": pre.to_dict(), "backbone": backbone, "backbone_name": bb.name}
    spec_path.write_text(json.dumps(spec, indent=2))
    return Backbone(bb, folder / "image_encoder.onnx", spec)


def image_vectors(
    manifest: Manifest, onnx: Path, preprocess: dict[str, Any], cache: Path
) -> dict[str, np.ndarray]:
    ids, feats, report = extract_features(
        manifest, onnx, PreprocessConfig.from_dict(preprocess), cache
    )  # progress: xlsearch.common.progress (off with the commands' --no-progress)
    if report.get("skipped"):
        print(f"      skipped {len(report['skipped'])} unreadable images (see {cache}/report.json)")
    return dict(zip(ids, feats, strict=True))


def sentence_vectors(
    manifest: Manifest, spec: dict[str, Any] | None, cache: Path
) -> dict[str, dict[str, Any]]:
    """e5 vectors of every sentence: zh as queries, en as passages (cached on disk)."""
    if spec is None:
        return {"zh": {}, "en": {}}
    enc = build_sentence_encoder(spec)
    out = {}
    for lang, role in (("zh", "query"), ("en", "passage")):
        texts = sorted({s for r in manifest.records for s in getattr(r, lang)})
        vecs = cached_encode(enc, texts, role, cache)
        out[lang] = dict(zip(texts, vecs, strict=True))
    return out
