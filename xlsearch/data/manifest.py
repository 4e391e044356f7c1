"""The one dataset format: a folder holding ``manifest.jsonl`` (one JSON object per image) and its images.

Each line: ``{"id", "image", "split", "en", "zh", "tags_en", "tags_zh"}``. ``image`` is a relative path from the
manifest's folder (it may climb out with ``..``, as re-split manifests do), ``split`` is one of ``SPLITS`` and the four
text fields are lists of non-blank strings (possibly empty). Every format problem raises ``ManifestError`` naming
``path:line``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from xlsearch.common.atomic import write_text_atomic
from xlsearch.errors import InvalidArgument

MANIFEST_NAME = "manifest.jsonl"
SPLITS: tuple[str, ...] = ("train", "val", "test")
TEXT_FIELDS: tuple[str, ...] = ("en", "zh", "tags_en", "tags_zh")
KEYS: tuple[str, ...] = ("id", "image", "split", *TEXT_FIELDS)
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)


class ManifestError(InvalidArgument):
    """A manifest problem; the message is always ``path:line: reason``."""

    def __init__(self, path: str | os.PathLike[str], line: int, reason: str) -> None:
        self.path, self.line, self.reason = Path(path), line, reason
        super().__init__(f"{path}:{line}: {reason}")


@dataclass(frozen=True)
class Record:
    """One image. Frozen so records can be shared safely; use ``dataclasses.replace`` to derive a changed copy.
    (The lists themselves stay mutable lists so they compare equal to plain JSON lists; do not mutate them.)"""

    id: str
    image: str
    split: str
    en: list[str] = field(default_factory=list)
    zh: list[str] = field(default_factory=list)
    tags_en: list[str] = field(default_factory=list)
    tags_zh: list[str] = field(default_factory=list)

    @property
    def annotated(self) -> bool:
        """True when the image carries any text at all (sentence or tag, either language)."""
        return any(getattr(self, name) for name in TEXT_FIELDS)

    def to_json(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in KEYS}


def _problem(obj: Any) -> str | None:
    """Why ``obj`` (a decoded line) is not a valid record, or None."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    missing = [key for key in KEYS if key not in obj]
    if missing:
        return f"missing key(s): {', '.join(missing)}"
    unknown = sorted(set(obj) - set(KEYS))
    if unknown:
        return f"unknown key(s): {', '.join(unknown)} (allowed: {', '.join(KEYS)})"
    for key in ("id", "image"):
        if not isinstance(obj[key], str) or not obj[key].strip():
            return f"{key!r} must be a non-empty string, got {obj[key]!r}"
    image = obj["image"]
    if PurePosixPath(image).is_absolute() or PureWindowsPath(image).is_absolute():
        return f"'image' must be relative to the manifest folder, got {image!r}"
    if obj["split"] not in SPLITS:
        return f"'split' must be one of {'|'.join(SPLITS)}, got {obj['split']!r}"
    for key in TEXT_FIELDS:
        value = obj[key]
        if not isinstance(value, list):
            return f"{key!r} must be a list of strings, got {type(value).__name__}"
        for i, text in enumerate(value):
            if not isinstance(text, str) or not text.strip():
                return f"{key}[{i}] must be a non-blank string, got {text!r}"
    return None


@dataclass
class Manifest:
    """A loaded manifest. ``root`` is the (resolved) folder that ``Record.image`` paths are relative to."""

    root: Path
    records: list[Record]

    @property
    def path(self) -> Path:
        return self.root / MANIFEST_NAME

    def image_path(self, rec: Record) -> Path:
        # normpath collapses the ``..`` of re-split manifests; root is resolved, so this is safe.
        return Path(os.path.normpath(self.root / rec.image))

    def split(self, name: str) -> list[Record]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return [rec for rec in self.records if rec.split == name]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)


def _manifest_file(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path / MANIFEST_NAME if path.is_dir() else path


def read_manifest(path: str | os.PathLike[str], check_images: bool = True) -> Manifest:
    """Load a manifest from its folder or its ``manifest.jsonl``. Blank lines are ignored.

    Raises FileNotFoundError when there is no manifest, ManifestError for anything wrong inside it
    (including, with ``check_images``, an image file that does not exist).
    """
    file = _manifest_file(path)
    root = file.parent.resolve()
    records: list[Record] = []
    seen: dict[str, int] = {}
    with open(file, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise ManifestError(file, lineno, f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ManifestError(file, lineno, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
            reason = _problem(obj)
            if reason:
                raise ManifestError(file, lineno, reason)
            if obj["id"] in seen:
                raise ManifestError(
                    file, lineno, f"duplicate id {obj['id']!r} (first on line {seen[obj['id']]})"
                )
            seen[obj["id"]] = lineno
            rec = Record(**{key: obj[key] for key in KEYS})
            if check_images and not os.path.isfile(os.path.normpath(root / rec.image)):
                raise ManifestError(file, lineno, f"image file not found: {rec.image} (under {root})")
            records.append(rec)
    return Manifest(root=root, records=records)


def write_manifest(folder: str | os.PathLike[str], records: Iterable[Record]) -> Path:
    """Validate and atomically write ``folder/manifest.jsonl`` (temp file + os.replace). Returns its path.

    Raises ManifestError naming the line the bad record would have occupied.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / MANIFEST_NAME
    lines: list[str] = []
    seen: dict[str, int] = {}
    for lineno, rec in enumerate(records, start=1):
        obj = rec.to_json()
        reason = _problem(obj)
        if reason is None and rec.id in seen:
            reason = f"duplicate id {rec.id!r} (first on line {seen[rec.id]})"
        if reason:
            raise ManifestError(target, lineno, reason)
        seen[rec.id] = lineno
        lines.append(json.dumps(obj, ensure_ascii=False) + "\n")
    return write_text_atomic(target, "".join(lines))


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder rounding of ``n * fractions`` so the counts sum to exactly ``n``."""
    exact = [n * f for f in fractions]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def assign_splits(
    ids: Iterable[str], seed: int, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> dict[str, str]:
    """Seeded train/val/test assignment by image id.

    Depends only on the *set* of ids and the seed (ids are sorted before the seeded shuffle), and the split sizes are
    exactly ``fractions`` of the total up to rounding.
    """
    fractions = tuple(float(f) for f in fractions)
    if (
        len(fractions) != len(SPLITS)
        or any(f < 0 for f in fractions)
        or not math.isclose(sum(fractions), 1.0)
    ):
        raise ValueError(
            f"fractions must be {len(SPLITS)} non-negative numbers summing to 1, got {fractions}"
        )
    ordered = sorted(ids)
    if len(set(ordered)) != len(ordered):
        raise ValueError("assign_splits: ids must be unique")
    random.Random(seed).shuffle(ordered)
    out: dict[str, str] = {}
    start = 0
    for name, count in zip(SPLITS, _split_counts(len(ordered), fractions), strict=True):
        out.update((id_, name) for id_ in ordered[start : start + count])
        start += count
    return out


def resplit(
    records: Sequence[Record], seed: int, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> list[Record]:
    """Copies of ``records`` (same order) with fresh seeded splits."""
    splits = assign_splits((rec.id for rec in records), seed, fractions)
    return [dataclasses.replace(rec, split=splits[rec.id]) for rec in records]


def resplit_manifest(
    src_folder: str | os.PathLike[str],
    dst_folder: str | os.PathLike[str],
    seed: int,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> Path:
    """Write a manifest at ``dst_folder`` with new seeded splits whose images point back at ``src``'s files.

    Images are not copied: each ``image`` becomes ``os.path.relpath(src image, dst folder)``. Returns the new
    manifest path.
    """
    src = read_manifest(src_folder)
    dst = Path(dst_folder)
    dst.mkdir(parents=True, exist_ok=True)
    dst_root = dst.resolve()
    if dst_root == src.root:
        raise ValueError(f"resplit destination is the source folder ({dst_root}); choose another folder")
    moved = [
        dataclasses.replace(rec, image=Path(os.path.relpath(src.image_path(rec), dst_root)).as_posix())
        for rec in resplit(src.records, seed, fractions)
    ]
    return write_manifest(dst, moved)
