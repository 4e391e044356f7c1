"""FAISS factory strings the index accepts: ``IDMap,Flat`` (exact, default), ``HNSW{M}``, ``IVF{nlist|auto},{codec}``."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

DEFAULT_FACTORY = "IDMap,Flat"


@dataclass(frozen=True)
class FactorySpec:
    """A parsed factory string. ``kind`` is flat | hnsw | ivf; ``nlist`` None means auto."""

    kind: str
    name: str  # normalised factory string, recorded in the manifest
    hnsw_m: int = 0
    nlist: int | None = None
    codec: str = "Flat"

    @property
    def exact(self) -> bool:
        return self.kind == "flat"


_HNSW = re.compile(r"^(?:IDMap2?,)?HNSW(\d+)(?:,Flat)?$")
_IVF = re.compile(r"^(?:IDMap2?,)?IVF(\d+|auto),([A-Za-z][A-Za-z0-9_x]*)$")


def parse_factory(factory: str) -> FactorySpec:
    f = factory.replace(" ", "")
    if f in ("Flat", "IDMap,Flat", "IDMap2,Flat"):
        return FactorySpec("flat", DEFAULT_FACTORY)
    if m := _HNSW.match(f):
        return FactorySpec("hnsw", f"HNSW{int(m[1])}", hnsw_m=int(m[1]))
    if m := _IVF.match(f):
        nlist = None if m[1] == "auto" else int(m[1])
        if nlist is not None and nlist < 1:
            raise ValueError(f"factory {factory!r}: nlist must be >= 1")
        return FactorySpec("ivf", f"IVF{m[1]},{m[2]}", nlist=nlist, codec=m[2])
    raise ValueError(
        f"unsupported factory {factory!r}; use IDMap,Flat | HNSW<M> | IVF<nlist|auto>,Flat | IVF<nlist|auto>,PQ<m>"
    )


def auto_nlist(n: int) -> int:
    """~4*sqrt(n) lists, but at least 39 training points per list (faiss' k-means minimum)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))
