"""Compare two index folders built from the same images (e.g. `xlsearch index` and `xlsearch index --ray`): same ids,
same metadata, and the largest absolute difference of the stored image / caption vectors.

    python -m xlsearch_bench.index_diff --bundle runs/demo/bundle A_INDEX B_INDEX
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np


def compare(bundle_dir: str, a_dir: str, b_dir: str) -> str:
    from xlsearch.bundle.runtime import Bundle
    from xlsearch.index.image_index import ImageIndex

    bundle = Bundle(bundle_dir)
    a, b = ImageIndex.load(a_dir, bundle), ImageIndex.load(b_dir, bundle)
    ids_a = sorted(m.id for m in a.metadata(a.int_ids()))
    ids_b = sorted(m.id for m in b.metadata(b.int_ids()))
    if ids_a != ids_b:
        only = sorted(set(ids_a) ^ set(ids_b))
        raise SystemExit(f"the ids differ: {len(only)} in one index only (first: {only[0]})")
    ia = np.array([a.int_id(i) for i in ids_a], np.int64)
    ib = np.array([b.int_id(i) for i in ids_a], np.int64)
    same_meta = a.metadata(ia) == b.metadata(ib)
    d_image = float(np.abs(a.image_vectors(ia) - b.image_vectors(ib)).max()) if len(ia) else 0.0
    cap = np.array([m.has_caption for m in a.metadata(ia)], bool)
    d_caption = (
        float(np.abs(a.caption_vectors(ia[cap]) - b.caption_vectors(ib[cap])).max()) if cap.any() else 0.0
    )
    return (
        f"{len(ids_a)} ids equal, metadata {'equal' if same_meta else 'DIFFERENT'}, "
        f"max |image diff| {d_image:.2e}, max |caption diff| {d_caption:.2e}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m xlsearch_bench.index_diff", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--bundle", required=True)
    ap.add_argument("a")
    ap.add_argument("b")
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    print(compare(args.bundle, args.a, args.b))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
