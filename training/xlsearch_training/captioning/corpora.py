"""Sentence corpora for captioning, keyed by image id: a manifest's zh / en sentences per split, and the second Chinese
corpus (corpus A of Sequential Learning), which comes only from ``--corpus-a``: ``tuxpaint`` (each stamp's ``zh_TW``
description converted to simplified Chinese with OpenCC t2s) or a JSON file ``{image id: [sentences]}``."""

from __future__ import annotations

from pathlib import Path

from xlsearch.data.datasets.tuxpaint import DEFAULT_STAMPS_ROOT, parse_description
from xlsearch.data.manifest import Manifest

Sentences = dict[str, list[str]]  # image id -> sentences


def manifest_sentences(manifest: Manifest, split: str, lang: str) -> Sentences:
    """Images of ``split`` that have at least one ``lang`` sentence."""
    return {r.id: list(getattr(r, lang)) for r in manifest.split(split) if getattr(r, lang)}


def tuxpaint_zh_tw_simplified(
    image_ids: list[str], stamps_root: str | Path = DEFAULT_STAMPS_ROOT, lang: str = "zh_TW"
) -> Sentences:
    """``lang`` lines of ``<stamps_root>/<id>.txt`` converted to simplified Chinese (images without one are left
    out). Raises FileNotFoundError when no description file is found at all (wrong root or not Tux Paint ids)."""
    import opencc  # training-only dependency

    converter = opencc.OpenCC("t2s")
    root = Path(stamps_root)
    out: Sentences = {}
    found = 0
    for image_id in image_ids:
        txt = root / f"{image_id}.txt"
        if not txt.is_file():
            continue
        found += 1
        _, translations = parse_description(txt)
        text = translations.get(lang, "").strip()
        if text:
            out[image_id] = [converter.convert(text)]
    if image_ids and not found:
        raise FileNotFoundError(f"no Tux Paint description files for these images under {root}")
    return out


def load_corpus_a(
    source: str | None, image_ids: list[str], stamps_root: str | Path = DEFAULT_STAMPS_ROOT
) -> Sentences | None:
    """Corpus A of ``image_ids`` from ``--corpus-a`` (None when not given, or when it covers none of them)."""
    if not source:
        return None
    if source == "tuxpaint":
        try:
            out = tuxpaint_zh_tw_simplified(image_ids, stamps_root)
        except FileNotFoundError as e:
            print(f"      --corpus-a tuxpaint: {e}")
            return None
    else:
        import json

        data = json.loads(Path(source).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{source}: corpus A must be a JSON object {{image id: [sentences]}}")
        wanted = set(image_ids)
        out = {k: [str(s) for s in v] for k, v in data.items() if k in wanted and v}
    return out or None
