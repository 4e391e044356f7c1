"""A pool of un-annotated images (no text) as a manifest, for learning from images without descriptions (A3VSE).

Sources, in this order:
- a manifest's records that have neither English nor Chinese text,
- Tux Paint stamps whose description has no zh_CN line (PNG, else the SVG rendered with CairoSVG),
- any image folders (e.g. the Debian package openclipart-png: /usr/share/openclipart/png, ~8k PNGs).
Images are flattened onto white (many clip-art PNGs are transparent), shrunk so the shorter side is at most
`short_side` px (the encoders resize to 256 anyway) and saved as PNG under `out/images/`. A seeded sample caps the
total; every record is in split "train" with empty text fields. Re-running reuses images already written.

    python -m xlsearch.data.datasets.unannotated --out data/pool --folder /usr/share/openclipart/png --cap 3000
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from xlsearch.common.progress import progress as progress_bar
from xlsearch.data.manifest import Manifest, Record, read_manifest, write_manifest

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
DEFAULT_FOLDER = Path("/usr/share/openclipart/png")
DEFAULT_STAMPS = Path("/usr/share/tuxpaint/stamps")


@dataclass(frozen=True)
class Candidate:
    id: str
    source: Path  # image file (PNG/JPEG/... or an SVG stamp)
    fill: bool = False  # folder images only fill up to the cap; the other sources are always kept


def manifest_without_text(manifest: Manifest) -> list[Candidate]:
    return [
        Candidate(f"manifest/{r.id}", manifest.image_path(r)) for r in manifest.records if not (r.en or r.zh)
    ]


def tuxpaint_without_zh(stamps_root: Path = DEFAULT_STAMPS) -> list[Candidate]:
    from xlsearch.data.datasets.tuxpaint import ZH_LANG, find_stamps, parse_description

    out = []
    stamps, _ = find_stamps(stamps_root)
    for s in stamps:
        try:
            _, translations = parse_description(s.txt)
        except (OSError, UnicodeDecodeError):
            continue
        image = s.png or s.svg
        if ZH_LANG not in translations and image is not None:
            out.append(Candidate(f"tuxpaint/{s.id}", image))
    return out


def folder_images(folder: Path, name: str | None = None) -> list[Candidate]:
    name = name or folder.name
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return [
        Candidate(f"{name}/{p.relative_to(folder).with_suffix('').as_posix()}", p, fill=True) for p in files
    ]


def _flatten(path: Path, short_side: int, max_pixels: int) -> Image.Image | None:
    """RGB on white, shorter side <= short_side; None when unreadable, too large or nothing visible."""
    try:
        if path.suffix.lower() == ".svg":
            from xlsearch.data.datasets.tuxpaint import render_svg

            img = render_svg(path, size=max(512, short_side * 2))
        else:
            img = Image.open(path)
            if img.width * img.height > max_pixels:  # some clip-art PNGs are posters of 100+ megapixels
                return None
            img.load()
    except Exception:  # noqa: BLE001 - any decoder/renderer failure just skips the image
        return None
    rgba = img.convert("RGBA")
    if rgba.getchannel("A").getextrema()[1] == 0:
        return None
    flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if all(lo == hi for lo, hi in flat.getextrema()):
        return None  # a single colour: nothing to learn from
    scale = short_side / min(flat.size)
    if scale < 1:
        flat = flat.resize(
            (max(1, round(flat.width * scale)), max(1, round(flat.height * scale))), Image.BICUBIC
        )
    return flat


def build_pool(
    out: str | os.PathLike[str],
    candidates: Sequence[Candidate],
    cap: int | None = None,
    seed: int = 0,
    short_side: int = 256,
    max_pixels: int = 16_000_000,
    workers: int = 2,
    progress: bool = True,
) -> Manifest:
    """Write the un-annotated pool manifest at `out`: every non-`fill` candidate, then a seeded sample of the `fill`
    candidates (folder images) up to `cap` images in total."""
    out = Path(out)
    chosen = [c for c in candidates if not c.fill]
    fill = [c for c in candidates if c.fill]
    room = len(fill) if cap is None else max(0, cap - len(chosen))
    chosen += random.Random(seed).sample(fill, min(room, len(fill)))
    chosen.sort(key=lambda c: c.id)

    def materialise(cand: Candidate) -> Record | None:
        rel = Path("images") / f"{cand.id}.png"
        target = out / rel
        if not target.exists():
            img = _flatten(cand.source, short_side, max_pixels)
            if img is None:
                return None
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            img.save(tmp, format="PNG")
            os.replace(tmp, target)
        return Record(id=cand.id, image=rel.as_posix(), split="train")

    records, skipped = [], []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = pool.map(materialise, chosen)
        for cand, rec in progress_bar(
            zip(chosen, done, strict=True), total=len(chosen), desc="un-annotated pool", disable=not progress
        ):
            if rec is None:
                skipped.append(cand.id)
            else:
                records.append(rec)
    write_manifest(out, records)
    report = {
        "candidates": len(candidates),
        "cap": cap,
        "seed": seed,
        "kept": len(records),
        "skipped": skipped,
    }
    (out / "pool_report.json").write_text(json.dumps(report, indent=1))
    return read_manifest(out)


def default_candidates(
    manifest: Manifest | None = None,
    stamps_root: Path | None = DEFAULT_STAMPS,
    folders: Sequence[Path] = (DEFAULT_FOLDER,),
) -> list[Candidate]:
    """Every available source (missing folders are left out)."""
    out: list[Candidate] = []
    if manifest is not None:
        out += manifest_without_text(manifest)
    if stamps_root is not None and stamps_root.is_dir():
        out += tuxpaint_without_zh(stamps_root)
    for folder in folders:
        if folder.is_dir():
            out += folder_images(folder)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--manifest", help="also take this manifest's images that have no text")
    ap.add_argument("--stamps-root", default=str(DEFAULT_STAMPS), help="Tux Paint stamps ('' to skip)")
    ap.add_argument("--folder", action="append", help=f"image folder (repeatable; default {DEFAULT_FOLDER})")
    ap.add_argument("--cap", type=int, help="at most this many images (seeded sample)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cands = default_candidates(
        read_manifest(args.manifest) if args.manifest else None,
        Path(args.stamps_root) if args.stamps_root else None,
        [Path(f) for f in (args.folder or [DEFAULT_FOLDER])],
    )
    pool = build_pool(args.out, cands, args.cap, args.seed)
    print(f"{len(pool)} un-annotated images in {args.out} (from {len(cands)} candidates)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
