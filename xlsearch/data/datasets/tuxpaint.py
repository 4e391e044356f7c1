"""Tux Paint stamps (Debian ``tuxpaint-stamps-default``) -> manifest.

A stamp is ``NAME.txt`` (line 1: English description; other lines ``lang.utf8=text``) beside ``NAME.png`` and/or
``NAME.svg``. Stamps with both an English and a ``zh_CN`` description are converted: the PNG is preferred, SVG-only
stamps are rendered with CairoSVG (longer side ``svg_size`` px), transparency is composited onto white and the result
is written as an RGB PNG to ``<out>/images/<id>.png`` where ``id`` is the stamp path relative to the stamps root
without extension. Images already present in ``<out>/images`` are reused (resume); delete that folder to re-render,
e.g. after changing ``svg_size``. Everything left out is listed with its reason in ``<out>/conversion_report.json``.
"""

from __future__ import annotations

import io
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from xlsearch.common.progress import progress as progress_bar
from xlsearch.data.datasets.common import REPORT_NAME, MissingDependencyError, write_json_atomic
from xlsearch.data.manifest import Record, assign_splits, write_manifest

DEFAULT_STAMPS_ROOT = Path("/usr/share/tuxpaint/stamps")
DEFAULT_SVG_SIZE = 512
ZH_LANG = "zh_CN"
IMAGE_DIR = "images"
# "zh_CN.utf8=", "ca@valencia.utf8=", "sr@latin.utf8=", ...
_LANG_LINE = re.compile(r"^([A-Za-z]{2,3}(?:_[A-Za-z]{2})?(?:@\w+)?)\.utf8=(.*)$")
_DOCTYPE = re.compile(r"<!DOCTYPE[^\[>]*\[(.*?)\]\s*>", re.S)
_ENTITY = re.compile(r"<!ENTITY\s+([A-Za-z_][\w.-]*)\s+([\"'])(.*?)\2\s*>", re.S)


@dataclass(frozen=True)
class Stamp:
    id: str
    txt: Path
    png: Path | None
    svg: Path | None


class SkipStamp(Exception):
    """This stamp cannot be converted; the message is the reason recorded in the report."""


def parse_description(path: Path) -> tuple[str, dict[str, str]]:
    """(English line 1, {lang: text}) of a stamp's .txt. English is "" when line 1 is missing or a lang line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    english = lines[0].strip() if lines and not _LANG_LINE.match(lines[0]) else ""
    translations: dict[str, str] = {}
    for line in lines[1:]:
        match = _LANG_LINE.match(line)
        if match:
            translations[match.group(1)] = match.group(2).strip()
    return english, translations


def find_stamps(root: Path) -> tuple[list[Stamp], list[str]]:
    """All description files under ``root`` (sorted by id) and the ids of images that have no description."""
    stamps: list[Stamp] = []
    described: set[str] = set()
    for txt in root.rglob("*.txt"):
        base = txt.with_suffix("")
        png, svg = base.with_suffix(".png"), base.with_suffix(".svg")
        stamp_id = base.relative_to(root).as_posix()
        described.add(stamp_id)
        stamps.append(Stamp(stamp_id, txt, png if png.is_file() else None, svg if svg.is_file() else None))
    orphans = {
        p.with_suffix("").relative_to(root).as_posix()
        for ext in ("png", "svg")
        for p in root.rglob(f"*.{ext}")
    }
    return sorted(stamps, key=lambda s: s.id), sorted(orphans - described)


def _flatten(img: Image.Image) -> Image.Image:
    """RGB on white. Raises SkipStamp when nothing would be visible."""
    rgba = img.convert("RGBA")
    if rgba.getchannel("A").getextrema()[1] == 0:
        raise SkipStamp("image is fully transparent")
    flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if all(lo == 255 for lo, _ in flat.getextrema()):
        raise SkipStamp("image is plain white once composited onto white")
    return flat


def _import_cairosvg() -> Any:
    try:
        import cairosvg  # lazy: only SVG-only stamps need it, and it needs the system cairo library
    except (ImportError, OSError) as exc:
        raise MissingDependencyError(
            f"CairoSVG is needed to render SVG-only stamps ({exc}); install it with `pip install 'xlsearch[data]'` "
            "(and the system cairo library, e.g. apt-get install libcairo2)"
        ) from exc
    return cairosvg


def _expand_entities(svg: bytes) -> bytes:
    """Inline the internal entities of the DOCTYPE (Adobe Illustrator writes ``<!ENTITY ns_svg "...">``).

    CairoSVG refuses entity declarations unless run with ``unsafe=True``, which would also allow external files and
    XXE; expanding the simple internal ones ourselves keeps the safe mode.
    """
    if b"<!ENTITY" not in svg:
        return svg
    text = svg.decode("utf-8")
    doctype = _DOCTYPE.search(text)
    if doctype is None:
        return svg
    entities = {name: value for name, _, value in _ENTITY.findall(doctype.group(1))}
    text = text[: doctype.start()] + text[doctype.end() :]
    for name, value in entities.items():
        text = text.replace(f"&{name};", value)
    return text.encode("utf-8")


def render_svg(path: Path, size: int = DEFAULT_SVG_SIZE) -> Image.Image:
    """Render an SVG so its longer side is ``size`` px (aspect ratio kept)."""
    cairosvg = _import_cairosvg()
    svg = _expand_entities(path.read_bytes())
    img = Image.open(io.BytesIO(cairosvg.svg2png(bytestring=svg, url=str(path), output_width=size)))
    if img.height > size:  # portrait: fixing the width made the height too large
        img = Image.open(io.BytesIO(cairosvg.svg2png(bytestring=svg, url=str(path), output_height=size)))
    img.load()
    return img


def load_stamp_image(stamp: Stamp, svg_size: int) -> tuple[Image.Image, str]:
    """(flattened RGB image, source kind). Falls back to the SVG when the PNG is unreadable."""
    errors: list[str] = []
    if stamp.png is not None:
        try:
            with Image.open(stamp.png) as img:
                img.load()
                return _flatten(img), "png"
        except (OSError, SyntaxError, ValueError) as exc:  # PIL raises these for corrupt files
            errors.append(f"png: {exc}")
    if stamp.svg is not None:
        try:
            return _flatten(render_svg(stamp.svg, svg_size)), "svg"
        except MissingDependencyError:
            raise
        except Exception as exc:  # CairoSVG raises many types for bad SVGs; record, don't crash
            errors.append(f"svg: {type(exc).__name__}: {exc}")
    if not errors:
        raise SkipStamp("no .png or .svg beside the description")
    raise SkipStamp("; ".join(errors))


def save_stamp_png(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)  # atomic, so an interrupted run never leaves a truncated image to be "reused"


def convert_tuxpaint(
    out: str | os.PathLike[str],
    stamps_root: str | os.PathLike[str] = DEFAULT_STAMPS_ROOT,
    seed: int = 0,
    *,
    svg_size: int = DEFAULT_SVG_SIZE,
    only: Sequence[str] | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert the stamps under ``stamps_root`` into a manifest folder ``out``; returns the report (also written).

    ``only``: keep stamps whose id starts with one of these prefixes (e.g. ``"animals/"``); ``limit``: keep at most
    this many (after sorting by id) — both for quick trials. Splits are seeded 70/15/15 by image.
    """
    root, out = Path(stamps_root), Path(out)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Tux Paint stamps folder not found: {root} (apt-get install tuxpaint-stamps-default)"
        )
    stamps, orphans = find_stamps(root)
    excluded: list[dict[str, str]] = []
    selected: list[tuple[Stamp, str, str]] = []
    for stamp in stamps:
        if only is not None and not any(stamp.id.startswith(prefix) for prefix in only):
            continue
        try:
            english, translations = parse_description(stamp.txt)
        except (OSError, UnicodeDecodeError) as exc:
            excluded.append({"id": stamp.id, "reason": f"unreadable description: {exc}"})
            continue
        zh = translations.get(ZH_LANG, "")
        if not english or not zh:
            missing = " and ".join(name for name, text in (("English", english), (ZH_LANG, zh)) if not text)
            excluded.append({"id": stamp.id, "reason": f"no {missing} description"})
            continue
        selected.append((stamp, english, zh))
    if limit is not None:
        selected = selected[:limit]

    converted: list[tuple[str, str, str]] = []
    skipped: list[dict[str, str]] = []
    sources: Counter[str] = Counter()
    reused = 0
    for stamp, english, zh in progress_bar(selected, desc="tuxpaint", unit="stamp", disable=not progress):
        target = out / IMAGE_DIR / f"{stamp.id}.png"
        if target.is_file():
            reused += 1
            # Attributed to the file it would normally come from (a PNG that fell back to its SVG counts as png).
            sources["png" if stamp.png is not None else "svg"] += 1
        else:
            try:
                img, kind = load_stamp_image(stamp, svg_size)
            except SkipStamp as exc:
                skipped.append({"id": stamp.id, "reason": str(exc)})
                continue
            save_stamp_png(img, target)
            sources[kind] += 1
        converted.append((stamp.id, english, zh))

    splits = assign_splits((stamp_id for stamp_id, _, _ in converted), seed)
    records = [
        Record(id=i, image=f"{IMAGE_DIR}/{i}.png", split=splits[i], en=[en], zh=[zh])
        for i, en, zh in converted
    ]
    write_manifest(out, records)
    report = {
        "dataset": "tuxpaint-stamps-default",
        "stamps_root": str(root.resolve()),
        "seed": seed,
        "svg_size": svg_size,
        "counts": {
            "descriptions": len(stamps),
            "selected": len(selected),
            "converted": len(converted),
            "from_png": sources["png"],
            "from_svg": sources["svg"],
            "reused": reused,
            "skipped": len(skipped),
            "excluded": len(excluded),
            "images_without_description": len(orphans),
        },
        "splits": dict(Counter(rec.split for rec in records)),
        "skipped": skipped,
        "excluded": excluded,
        "images_without_description": orphans,
    }
    write_json_atomic(out / REPORT_NAME, report)
    return report
