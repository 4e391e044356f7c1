"""``xlsearch dataset {tuxpaint,cococn,resplit,info}`` (or ``python -m xlsearch.data.datasets.cli``): build, re-split and inspect manifests.

Data problems (bad manifest or source line, missing file or dependency) print one ``error: path:line: reason`` line on
stderr and exit with status 2; they never print a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from xlsearch.data.datasets.common import DatasetError, MissingDependencyError
from xlsearch.data.manifest import (
    SPLITS,
    TEXT_FIELDS,
    Manifest,
    ManifestError,
    read_manifest,
    resplit_manifest,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xlsearch dataset", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    tux = sub.add_parser("tuxpaint", help="convert the Debian tuxpaint-stamps-default stamps")
    tux.add_argument("--out", required=True, type=Path, help="output manifest folder")
    tux.add_argument(
        "--stamps-root", type=Path, default=None, help="stamps folder (default /usr/share/tuxpaint/stamps)"
    )
    tux.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    tux.add_argument(
        "--limit", type=int, default=None, help="convert at most this many stamps (quick trials)"
    )
    tux.add_argument("--no-progress", "--quiet", action="store_true", help="no progress display")

    coco = sub.add_parser("cococn", help="convert COCO-CN (+ MS-COCO 2014 captions and images)")
    coco.add_argument("--cococn", required=True, type=Path, help="COCO-CN folder (coco-cn_train.txt, ...)")
    coco.add_argument(
        "--coco", required=True, type=Path, help="MS-COCO root (train2014/, val2014/, annotations/)"
    )
    coco.add_argument("--out", required=True, type=Path, help="output manifest folder")

    rs = sub.add_parser("resplit", help="new seeded splits over an existing manifest's images (no copies)")
    rs.add_argument("--src", required=True, type=Path)
    rs.add_argument("--out", required=True, type=Path)
    rs.add_argument("--seed", required=True, type=int)

    info = sub.add_parser("info", help="counts per split, annotation and language")
    info.add_argument("dir", type=Path, help="manifest folder or manifest.jsonl")
    info.add_argument(
        "--no-check-images", action="store_true", help="do not require the image files to exist"
    )
    return parser


def info_table(manifest: Manifest) -> str:
    """A small fixed-width table: one row per split plus a total."""
    columns = ["images", "annotated", "unannotated", *TEXT_FIELDS]
    rows: list[list[Any]] = []
    for name, recs in [*((s, manifest.split(s)) for s in SPLITS), ("total", manifest.records)]:
        annotated = sum(rec.annotated for rec in recs)
        texts = [sum(len(getattr(rec, f)) for rec in recs) for f in TEXT_FIELDS]
        rows.append([name, len(recs), annotated, len(recs) - annotated, *texts])
    header = ["split", *columns]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{widths[0]}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*row) for row in [header, *rows])


def _summary(report: dict[str, Any]) -> str:
    counts = ", ".join(f"{k}={v}" for k, v in report["counts"].items())
    splits = ", ".join(f"{k}={v}" for k, v in sorted(report["splits"].items()))
    return f"{counts}\nsplits: {splits}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "tuxpaint":
            from xlsearch.data.datasets.tuxpaint import DEFAULT_STAMPS_ROOT, convert_tuxpaint

            report = convert_tuxpaint(
                args.out,
                args.stamps_root or DEFAULT_STAMPS_ROOT,
                args.seed,
                limit=args.limit,
                progress=not args.no_progress,
            )
            for item in report["skipped"]:
                print(f"skipped {item['id']}: {item['reason']}", file=sys.stderr)
            print(_summary(report))
        elif args.command == "cococn":
            from xlsearch.data.datasets.cococn import convert_cococn

            print(_summary(convert_cococn(args.cococn, args.coco, args.out)))
        elif args.command == "resplit":
            try:
                print(f"wrote {resplit_manifest(args.src, args.out, args.seed)}")
            except ValueError as exc:  # e.g. --out is the source folder (ManifestError is a ValueError too)
                print(f"error: {exc}", file=sys.stderr)
                return 2
        elif args.command == "info":
            manifest = read_manifest(args.dir, check_images=not args.no_check_images)
            print(f"{manifest.path}\n{info_table(manifest)}")
    except (ManifestError, DatasetError, MissingDependencyError, OSError) as exc:
        # OSError covers a missing folder, manifest or source file.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
