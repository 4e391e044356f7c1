"""COCO-CN (Li et al. 2019) + MS-COCO 2014 -> manifest, without copying images.

COCO-CN folder (published archive ``coco-cn-version1805v1.1``):

* ``coco-cn_{train,val,test}.txt``: one image id per line, e.g. ``COCO_val2014_000000043734`` (the official split);
* ``imageid.human-written-caption.txt``: ``<imageid>#<n><TAB or space><Chinese sentence>``;
* ``imageid.human-written-tags.txt``: ``<imageid> tag tag ...`` (Chinese tags);
* ``imageid.manually-translated-caption.txt`` (optional; test images): ``<imageid>#zhm#<n> <sentence>``, Chinese
  translations of an English COCO caption, also used as ``zh``.

The shorter names ``imageid.caption.txt`` / ``imageid.tags.txt`` are accepted too. Machine translations and the
word-segmented ``*.bosonseg.txt`` files are ignored. English comes from MS-COCO's ``captions_{train,val}2014.json``
(looked up in ``<coco>/annotations/`` or ``<coco>/``), images from ``<coco>/{train,val}2014/<imageid>.jpg``; the
manifest's ``image`` is a relative path from the output folder to that file.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xlsearch.data.datasets.common import REPORT_NAME, DatasetError, write_json_atomic
from xlsearch.data.manifest import SPLITS, Record, write_manifest

IMAGE_ID = re.compile(r"^COCO_(train|val)2014_\d{12}$")
CAPTION_FILES = ("imageid.human-written-caption.txt", "imageid.caption.txt")
TAG_FILES = ("imageid.human-written-tags.txt", "imageid.tags.txt")
TRANSLATED_FILE = "imageid.manually-translated-caption.txt"


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of the non-blank lines of a UTF-8 text file; decoding errors name the line."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").strip()
            except UnicodeDecodeError as exc:
                raise DatasetError(path, lineno, f"not UTF-8 ({exc.reason})") from None
            if text:
                yield lineno, text


def _check_id(image_id: str, path: Path, lineno: int) -> str:
    if not IMAGE_ID.match(image_id):
        raise DatasetError(
            path, lineno, f"not a COCO 2014 image id: {image_id!r} (e.g. COCO_val2014_000000043734)"
        )
    return image_id


def _first(folder: Path, names: tuple[str, ...], required: bool = True) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    if required:
        raise FileNotFoundError(f"{folder}: none of {', '.join(names)} found")
    return None


def read_splits(folder: Path) -> dict[str, tuple[str, Path, int]]:
    """{image id: (split, list file, line)} from ``coco-cn_{split}.txt``."""
    where: dict[str, tuple[str, Path, int]] = {}
    for split in SPLITS:
        path = folder / f"coco-cn_{split}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"COCO-CN split list not found: {path}")
        for lineno, text in _lines(path):
            image_id = _check_id(text, path, lineno)
            if image_id in where:
                _, first, first_line = where[image_id]
                raise DatasetError(path, lineno, f"{image_id} is already listed at {first}:{first_line}")
            where[image_id] = (split, path, lineno)
    return where


def read_sentences(path: Path) -> dict[str, list[str]]:
    """{image id: sentences} from ``<imageid>#<key> <sentence>`` lines, in file order."""
    out: dict[str, list[str]] = defaultdict(list)
    for lineno, text in _lines(path):
        parts = text.split(None, 1)
        key = parts[0]
        if "#" not in key or len(parts) < 2:
            raise DatasetError(path, lineno, "expected '<imageid>#<n> <sentence>'")
        out[_check_id(key.split("#", 1)[0], path, lineno)].append(parts[1].strip())
    return out


def read_tags(path: Path) -> dict[str, list[str]]:
    """{image id: tags} from ``<imageid> tag tag ...`` lines (repeated tags dropped, order kept)."""
    out: dict[str, list[str]] = {}
    for lineno, text in _lines(path):
        image_id, *tags = text.split()
        _check_id(image_id, path, lineno)
        if image_id in out:
            raise DatasetError(path, lineno, f"second tag line for {image_id}")
        out[image_id] = list(dict.fromkeys(tags))
    return out


def read_coco_captions(coco_root: Path, needed: set[str]) -> dict[str, list[str]]:
    """English captions of the ``needed`` image ids from ``captions_{train,val}2014.json``."""
    out: dict[str, list[str]] = defaultdict(list)
    for part in ("train", "val"):
        if not any(i.startswith(f"COCO_{part}2014_") for i in needed):
            continue
        name = f"captions_{part}2014.json"
        path = _first(coco_root / "annotations", (name,), required=False) or coco_root / name
        if not path.is_file():
            raise FileNotFoundError(
                f"MS-COCO captions not found: {coco_root / 'annotations' / name} (or {path})"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            stems = {img["id"]: Path(img["file_name"]).stem for img in data["images"]}
            for ann in data["annotations"]:
                stem = stems[ann["image_id"]]
                if stem in needed:
                    out[stem].append(
                        " ".join(ann["caption"].split())
                    )  # COCO captions carry stray newlines/spaces
        except json.JSONDecodeError as exc:
            raise DatasetError(path, exc.lineno, f"invalid JSON: {exc.msg}") from None
        except (KeyError, TypeError, AttributeError) as exc:
            raise DatasetError(
                path, None, f"not a COCO captions file ({type(exc).__name__}: {exc})"
            ) from None
    return out


def convert_cococn(
    cococn: str | os.PathLike[str], coco: str | os.PathLike[str], out: str | os.PathLike[str]
) -> dict[str, Any]:
    """Write a manifest for COCO-CN at ``out`` (official splits); returns the report (also written)."""
    cococn, coco, out = Path(cococn), Path(coco), Path(out)
    where = read_splits(cococn)
    captions_path = _first(cococn, CAPTION_FILES)
    tags_path = _first(cococn, TAG_FILES)
    translated_path = _first(cococn, (TRANSLATED_FILE,), required=False)
    assert captions_path is not None and tags_path is not None
    zh = read_sentences(captions_path)
    zh_translated = read_sentences(translated_path) if translated_path else {}
    tags = read_tags(tags_path)
    en = read_coco_captions(coco, set(where))

    out.mkdir(parents=True, exist_ok=True)
    out_root = out.resolve()
    records: list[Record] = []
    for image_id, (split, list_file, lineno) in where.items():
        image = coco.resolve() / image_id.split("_")[1] / f"{image_id}.jpg"
        if not image.is_file():
            raise DatasetError(list_file, lineno, f"image not found: {image}")
        records.append(
            Record(
                id=image_id,
                image=Path(os.path.relpath(image, out_root)).as_posix(),
                split=split,
                en=en.get(image_id, []),
                zh=zh.get(image_id, []) + zh_translated.get(image_id, []),
                tags_zh=tags.get(image_id, []),
            )
        )
    write_manifest(out, records)

    # Annotations for images outside the three split lists cannot be placed in a split; count them, don't guess.
    unlisted = {
        name: len(set(d) - set(where))
        for name, d in (("captions", zh), ("tags", tags), ("translated", zh_translated))
    }
    report = {
        "dataset": "coco-cn",
        "cococn": str(cococn.resolve()),
        "coco": str(coco.resolve()),
        "files": {
            "captions": captions_path.name,
            "tags": tags_path.name,
            "translated": translated_path and translated_path.name,
        },
        "counts": {
            "images": len(records),
            "annotated": sum(rec.annotated for rec in records),
            "zh_sentences": sum(len(rec.zh) for rec in records),
            "zh_translated_sentences": sum(len(v) for k, v in zh_translated.items() if k in where),
            "en_sentences": sum(len(rec.en) for rec in records),
            "tags_zh": sum(len(rec.tags_zh) for rec in records),
            "images_without_en": sum(not rec.en for rec in records),
            "images_without_zh": sum(not rec.zh for rec in records),
        },
        "splits": dict(Counter(rec.split for rec in records)),
        "annotated_images_not_in_any_split": unlisted,
    }
    write_json_atomic(out / REPORT_NAME, report)
    return report
