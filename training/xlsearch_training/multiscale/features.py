"""The multi-scale feature cache: every manifest image through the backbone once more, now with its stage taps,
as one vector [L2-normalised pooled feature ; pooled stages] per image (the image pipeline's resumable cache, keyed
by this ONNX file). Its first ``dim`` columns are the ordinary feature cache's vectors; the component input of a
multi-scale tagger is the whole vector, as a multi-scale bundle gives it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.data.manifest import Manifest
from xlsearch.encode.crops import l2_normalize
from xlsearch_training.backbones import BackboneConfig, build_backbone
from xlsearch_training.export import export_image_encoder
from xlsearch_training.inputs import image_vectors, slug
from xlsearch_training.multiscale.backbone import CacheEncoder, multiscale_spec, stage_taps


def ensure_multiscale_encoder(runs: Path, backbone: dict[str, Any], crop: str) -> tuple[Path, dict[str, Any]]:
    """(ONNX of pixels -> [feature ; stages], its spec), exported once per backbone config under ``runs``."""
    folder = runs / "image_encoder" / (slug(json.dumps(backbone, sort_keys=True) + crop) + "-multiscale")
    spec_path = folder / "spec.json"
    if spec_path.exists():
        return folder / "image_encoder.onnx", json.loads(spec_path.read_text())
    bb = build_backbone(BackboneConfig.from_dict(backbone))
    taps = stage_taps(bb)
    if taps is None:
        raise ValueError(
            f"backbone {backbone} has no stage taps (multi-scale features need EfficientNet-Lite0)"
        )
    pre = dataclasses.replace(bb.preprocess, crop=crop)
    folder.mkdir(parents=True, exist_ok=True)
    print(f"      exporting the multi-scale backbone {backbone} to ONNX")
    export_image_encoder(CacheEncoder(taps).eval(), folder / "image_encoder.onnx", image_size=pre.image_size)
    spec = {
        "dim": bb.dim,
        "multiscale": multiscale_spec(),
        "preprocess": pre.to_dict(),
        "backbone": backbone,
        "backbone_name": bb.name,
    }
    spec_path.write_text(json.dumps(spec, indent=2))
    return folder / "image_encoder.onnx", spec


def multiscale_vectors(
    manifest: Manifest, runs: Path, backbone: dict[str, Any], crop: str, cache: Path | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """({image id: [feature ; stages]}, the multi-scale component's input_feature spec). Each part is
    re-normalised after a crop average, as the bundle does."""
    onnx, spec = ensure_multiscale_encoder(runs, backbone, crop)
    vectors = image_vectors(manifest, onnx, spec["preprocess"], cache or runs / "cache" / "features")
    bounds = np.cumsum([0, spec["dim"], *spec["multiscale"]["dims"]])
    parts = list(zip(bounds[:-1], bounds[1:], strict=True))
    out = {
        k: np.concatenate([l2_normalize(v[a:b]) for a, b in parts]).astype(np.float32)
        for k, v in vectors.items()
    }
    feature = {key: spec[key] for key in ("dim", "backbone", "preprocess", "multiscale")}
    return out, feature
