"""Where the tagging and captioning commands get their inputs, with no assumption about the data:

- `open_dataset`: the ``--data`` manifest; only the default ``data/tuxpaint`` is built (from the Tux Paint stamps)
  when absent, any other missing folder is an error.
- `FeatureSource`: image features (and the components' ``input_feature`` spec) either from a retrieval run's
  backbone + feature cache (``--features-from``), or from a zero-training bundle's own image encoder, whose
  ``feature`` output is its embedding (``model_family`` "pretrained", ``xlsearch bundle pretrained``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.bundle.manifest import load_bundle_manifest
from xlsearch.data.manifest import Manifest
from xlsearch.encode.features import extract_features
from xlsearch_training.inputs import ensure_backbone, ensure_dataset, image_vectors

__all__ = ["DEFAULT_DATA", "FeatureSource", "open_dataset"]

DEFAULT_DATA = Path("data/tuxpaint")


def open_dataset(data: Path, stamps_root: str | None) -> Manifest:
    if Path(data) == DEFAULT_DATA or (Path(data) / "manifest.jsonl").exists():
        return ensure_dataset(Path(data), stamps_root)
    raise FileNotFoundError(f"{data}: no manifest.jsonl (build one with `xlsearch dataset ...`)")


@dataclass
class FeatureSource:
    """Features of any manifest's images, cached, plus the ``input_feature`` spec components record."""

    run: Path | None = None  # a retrieval run folder (backbone + cache)
    backbone: dict[str, Any] | None = None
    crop: str = "center"
    bundle: Path | None = None  # a pretrained bundle (its embedding is its feature)

    def __post_init__(self) -> None:
        if self.bundle is not None:
            m = load_bundle_manifest(self.bundle)
            if m.model_family != "pretrained":
                raise ValueError(
                    f"{self.bundle}: features come from a bundle only for zero-training (pretrained) bundles, "
                    "whose embedding is their feature; give --features-from RUN for a trained bundle"
                )
            self._manifest = m
        elif self.run is None or self.backbone is None:
            raise ValueError("a feature source needs a retrieval run + backbone, or a pretrained bundle")
        self._bb: Any = None

    def _backbone(self) -> Any:
        if self._bb is None:
            self._bb = ensure_backbone(self.run, self.backbone, self.crop)  # type: ignore[arg-type]
        return self._bb

    @property
    def input_feature(self) -> dict[str, Any]:
        if self.bundle is not None:
            image = self._manifest.image_encoder
            return {
                "dim": image.feature_dim,
                "backbone": image.backbone,
                "preprocess": image.preprocess.to_dict(),
            }
        bb = self._backbone()
        return {
            "dim": int(bb.spec["dim"]),
            "backbone": bb.spec["backbone"],
            "preprocess": bb.spec["preprocess"],
        }

    def __call__(self, manifest: Manifest, cache: Path | None = None) -> dict[str, np.ndarray]:
        if self.bundle is not None:
            image = self._manifest.image_encoder
            ids, feats, _ = extract_features(
                manifest, self.bundle / image.file, image.preprocess, cache or self.bundle.parent / ".features",
                progress=False,
            )  # fmt: skip
            return dict(zip(ids, feats, strict=True))
        bb = self._backbone()
        return image_vectors(
            manifest, bb.onnx, bb.spec["preprocess"], cache or self.run / "cache" / "features"
        )

    @classmethod
    def from_args(
        cls, features_from: str | None, bundle: str | None, runs: Path, backbone: dict[str, Any], crop: str
    ) -> FeatureSource:
        """``--features-from RUN``, else a pretrained ``--bundle``, else ``runs`` as the retrieval run."""
        if features_from:
            return cls(Path(features_from), backbone, crop)
        if bundle and load_bundle_manifest(bundle).model_family == "pretrained":
            return cls(bundle=Path(bundle))
        return cls(runs, backbone, crop)
