"""The benchmark queries: distinct Chinese sentences from a manifest's ``zh`` fields and/or a file, seeded order."""

from __future__ import annotations

import random
import unicodedata
from pathlib import Path


def has_han(text: str) -> bool:
    return any("CJK" in unicodedata.name(ch, "") for ch in text)


def load_queries(
    manifest: str | None = None, queries_file: str | None = None, limit: int = 0, seed: int = 0
) -> list[str]:
    """Distinct Chinese sentences (manifest ``zh`` fields and/or one query per line), shuffled by ``seed``."""
    texts: list[str] = []
    if queries_file:
        texts += Path(queries_file).read_text(encoding="utf-8").splitlines()
    if manifest:
        from xlsearch.data.manifest import read_manifest

        texts += [z for r in read_manifest(manifest, check_images=False).records for z in r.zh]
    out = [t for t in dict.fromkeys(t.strip() for t in texts) if t and has_han(t)]
    if not out:
        raise ValueError("no Chinese queries: give --manifest (zh sentences) or --queries-file")
    random.Random(seed).shuffle(out)
    return out[:limit] if limit else out
