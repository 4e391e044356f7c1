"""What an index must agree on with the bundle that serves it (``BundleKey``), and the one compatibility check."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xlsearch.bundle.manifest import BundleManifest
from xlsearch.errors import FailedPrecondition


class IndexFormatError(FailedPrecondition):
    """An index folder that is missing, incomplete or inconsistent."""


class IndexMismatchError(IndexFormatError):
    """An index folder built with a different bundle (hash, dim or CL space) than the one serving it."""


@dataclass(frozen=True)
class BundleKey:
    """``dim`` is the image (CM) space, ``cl_dim`` the CL space: equal in the visual space, the sentence encoder's
    dim in the sentence space."""

    bundle_hash: str
    dim: int
    cl_space: str
    cl_dim: int
    # Backbone feature the bundle's tagger/captioner read (0: the image encoder has no feature output). Derived
    # from the bundle, so not compared: an index built without features just cannot Tag/Caption by id.
    feature_dim: int = field(default=0, compare=False)

    @classmethod
    def of(cls, bundle: Any) -> BundleKey:
        """From a ``BundleKey``, a ``BundleManifest``, a bundle manifest dict, or a loaded ``Bundle``."""
        if isinstance(bundle, BundleKey):
            return bundle
        if isinstance(bundle, Mapping):
            bundle = BundleManifest.from_dict(dict(bundle))
        manifest = bundle if isinstance(bundle, BundleManifest) else bundle.manifest
        feature_dim = manifest.image_encoder.component_dim  # [feature ; multiscale], 0 without a feature
        return cls(manifest.content_hash, manifest.dim, manifest.cl_space, manifest.cl_dim, feature_dim)


def check_compatible(index: BundleKey, bundle: BundleKey, folder: Path | None = None) -> None:
    diffs = [
        f"{name}: index {getattr(index, name)!r} vs bundle {getattr(bundle, name)!r}"
        for name in ("bundle_hash", "dim", "cl_space", "cl_dim")
        if getattr(index, name) != getattr(bundle, name)
    ]
    if diffs:
        where = f"{folder}: " if folder else ""
        raise IndexMismatchError(
            f"{where}index was built with another bundle ({'; '.join(diffs)}); rebuild it with `xlsearch index`"
        )
