"""Extra English-only training images for the cascade's first stage: Tux Paint stamps that have an English
description but no zh_CN line (the main Tux Paint manifest leaves them out, as it needs both languages).

They are rendered like the main dataset (same loader: PNG preferred, SVG through CairoSVG, composited on white) into
``<out>/images`` and listed in ``<out>/manifest.jsonl`` (split "train", en only). Ids are prefixed with
``english-only/`` so they can never collide with the main manifest's ids. Resumable: rendered images are reused.
"""

from __future__ import annotations

from pathlib import Path

from xlsearch.common.progress import progress as progress_bar
from xlsearch.data.datasets.tuxpaint import (
    DEFAULT_STAMPS_ROOT,
    ZH_LANG,
    SkipStamp,
    find_stamps,
    load_stamp_image,
    parse_description,
    save_stamp_png,
)
from xlsearch.data.manifest import Manifest, Record, read_manifest, write_manifest

PREFIX = "english-only/"


def english_only_stamps(
    out: Path, stamps_root: Path = DEFAULT_STAMPS_ROOT, progress: bool = True
) -> Manifest:
    out = Path(out)
    if (out / "manifest.jsonl").exists():
        return read_manifest(out)
    stamps, _ = find_stamps(Path(stamps_root))
    records = []
    for stamp in progress_bar(stamps, desc="english-only stamps", unit="stamp", disable=not progress):
        english, translations = parse_description(stamp.txt)
        if not english or translations.get(ZH_LANG):
            continue
        rel = f"images/{stamp.id}.png"
        target = out / rel
        if not target.is_file():
            try:
                img, _ = load_stamp_image(stamp, 512)
            except SkipStamp:
                continue
            save_stamp_png(img, target)
        records.append(Record(id=PREFIX + stamp.id, image=rel, split="train", en=[english]))
    write_manifest(out, records)
    return read_manifest(out)
