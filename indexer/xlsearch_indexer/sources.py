"""Readers for the batch indexer: a dataset manifest, or a plain folder of images with an optional captions file."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from xlsearch.data.manifest import read_manifest

__all__ = ["IMAGE_SUFFIXES", "Source", "SourceItem", "folder_source", "manifest_source", "read_captions"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class SourceItem:
    """One image to index. ``captions[0]`` (English) is the description used for CL."""

    id: str
    path: Path
    uri: str
    captions: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


@dataclass
class Source:
    items: list[SourceItem]
    description: str
    warnings: list[str] = field(default_factory=list)  # go to report.json
    # The folders the images are read from (resolved): recorded in the index manifest, the only places the HTTP
    # API serves thumbnails from.
    roots: list[str] = field(default_factory=list)


def manifest_source(path: str | os.PathLike[str], splits: Sequence[str] = ()) -> Source:
    """Every record of a manifest (or only ``splits``): captions = ``en`` sentences, tags = ``tags_zh``. A missing
    image file is not an error here: the mapper skips and reports it like any unreadable image."""
    manifest = read_manifest(path, check_images=False)
    records = [r for r in manifest.records if not splits or r.split in splits]
    items = [
        SourceItem(r.id, manifest.image_path(r), str(manifest.image_path(r)), tuple(r.en), tuple(r.tags_zh))
        for r in records
    ]
    what = f"manifest {manifest.path}" + (f" (splits {', '.join(splits)})" if splits else "")
    return Source(items, what, roots=image_roots(manifest.root, [it.path for it in items]))


def image_roots(root: str | os.PathLike[str], paths: Sequence[Path]) -> list[str]:
    """The folders to record for ``paths``: ``root`` (resolved) when every image is inside it, else the fewest
    distinct folders holding them (a re-split manifest reads ``../`` images). Never a folder above them all."""
    top = os.path.realpath(root)
    parents = sorted({os.path.dirname(os.path.realpath(p)) for p in paths})
    if all(_inside(p, top) for p in parents):
        return [top]
    kept: list[str] = []
    for p in parents:  # sorted: a folder comes before the folders inside it
        if not any(_inside(p, k) for k in kept):
            kept.append(p)
    return kept


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def folder_source(
    folder: str | os.PathLike[str], captions_file: str | os.PathLike[str] | None = None
) -> Source:
    """Every image file under ``folder`` (recursively, sorted; hidden files and folders skipped). The id is the
    path relative to ``folder`` (POSIX). Captions come from ``captions_file`` (see ``read_captions``)."""
    root = Path(folder).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    paths = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    captions = read_captions(captions_file) if captions_file else {}
    items = []
    for p in paths:
        rel = p.relative_to(root).as_posix()
        items.append(SourceItem(rel, p, str(p), tuple(captions.pop(rel, ()))))
    warnings = [f"captions file names an image that is not in the folder: {rel}" for rel in sorted(captions)]
    what = f"folder {root}" + (f" with captions {captions_file}" if captions_file else "")
    return Source(items, what, warnings, roots=[os.path.realpath(root)])


def read_captions(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """``image -> captions`` from a CSV with header ``image,caption`` or JSONL lines ``{"image", "caption"}``
    (``caption`` a string or a list of strings). Image paths are relative to the images folder; several rows for one
    image add captions in order (the first is the CL description). Blank captions are ignored."""
    path = Path(path)
    out: dict[str, list[str]] = {}

    def put(where: str, image: object, caption: object) -> None:
        if not isinstance(image, str) or not image.strip():
            raise ValueError(f"{where}: 'image' must be a non-empty string")
        texts = caption if isinstance(caption, list) else [caption]
        if not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{where}: 'caption' must be a string or a list of strings")
        key = Path(image.strip()).as_posix().removeprefix("./")
        out.setdefault(key, []).extend(t.strip() for t in texts if t.strip())

    if path.suffix.lower() in (".jsonl", ".json"):
        with open(path, encoding="utf-8-sig") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: invalid JSON: {e.msg}") from None
                if not isinstance(obj, dict):
                    raise ValueError(f"{path}:{n}: expected an object with 'image' and 'caption'")
                put(f"{path}:{n}", obj.get("image"), obj.get("caption", []))
    else:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
                raise ValueError(
                    f"{path}: CSV needs a header with 'image' and 'caption', got {reader.fieldnames}"
                )
            for n, row in enumerate(reader, start=2):
                put(f"{path}:{n}", row["image"], row["caption"] or "")
    return out
