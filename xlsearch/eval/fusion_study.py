"""Does the served fusion choice hold on unseen data? Every fixed choice against the choice rules, over seeded splits.

For each seed's bundle (``<runs>/seed<N>/<variant>/bundle``) and split (``<runs>/splits/seed<N>``) the validation and
test scores of CL in each space and of CM are computed once (`xlsearch.eval.benchmark.score`); then each choice is
applied to the test split:

- fixed: CL e5 zero-shot (the peer baseline: no training, no validation), CL in the visual space, CM, CLM in each
  space with alpha grid-searched on validation;
- rules on the (CL space, alpha) grid: ``best`` (the highest validation MRR: what bundles were served with before)
  and ``1se`` (the one-standard-error rule toward zero-shot e5, `xlsearch.eval.fusion.choose_fusion`);
- rules on the simplex of (CL visual, CL e5, CM) weights (`xlsearch.eval.fusion.choose_simplex`): ``best`` and
  ``1se`` toward zero-shot e5 — the latter is what `xlsearch-train` serves (`xlsearch.eval.benchmark.evaluate`,
  "CLM served", written into the bundle manifest's ``fusion``).

Two tables: test MRR (mean ± std over seeds) with the paired gain over CL e5 zero-shot and on how many seeds it
reaches the bar (+0.05 MRR), then every split's test MRR per choice. ``--out`` keeps each seed's rows (keyed by the
bundle's content hash), so a re-run only scores new or changed bundles.

    xlsearch fusion-study --runs runs/demo --seeds 0,1,2,3,4 --out runs/demo/fusion_study.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from xlsearch.bundle.runtime import Bundle
from xlsearch.data.manifest import read_manifest
from xlsearch.encode.features import extract_features
from xlsearch.eval.benchmark import build_query_set, score
from xlsearch.eval.fusion import choose_alpha, choose_fusion, choose_simplex, fuse
from xlsearch.eval.metrics import mean_std, retrieval_metrics

__all__ = ["BAR", "CHOICES", "SERVED", "main", "seed_rows", "split_table", "study_table"]

BAR = 0.05  # the held-out bar: served CLM at least this much MRR above zero-shot e5 CL
BASE = "CL e5 zero-shot"
SERVED = "simplex 1se toward e5 (served)"
CHOICES = (
    BASE,
    "CL visual",
    "CM",
    "CLM visual (alpha on val)",
    "CLM e5 (alpha on val)",
    "space+alpha best (max val MRR)",
    "space+alpha 1se toward e5",
    "simplex best (max val MRR)",
    SERVED,
)
SHORT = {BASE: "CL e5", "CL visual": "CL vis", "CM": "CM", "CLM visual (alpha on val)": "CLM vis",
         "CLM e5 (alpha on val)": "CLM e5", "space+alpha best (max val MRR)": "sp+a best",
         "space+alpha 1se toward e5": "sp+a 1se", "simplex best (max val MRR)": "simplex best",
         SERVED: "served"}  # fmt: skip


def seed_rows(bundle_dir: Path, split_dir: Path, cache: Path, progress: bool = False) -> dict[str, Any]:
    """Test MRR of every choice on one seeded split, with what each rule chose."""
    bundle = Bundle(bundle_dir)
    manifest = read_manifest(split_dir)
    ids, feats, _ = extract_features(
        manifest, bundle_dir / "image_encoder.onnx", bundle.preprocess_config, cache, progress=progress
    )
    vectors = dict(zip(ids, feats, strict=True))
    val_qs, test_qs = build_query_set(manifest.split("val")), build_query_set(manifest.split("test"))
    val, test = score(bundle, val_qs, vectors), score(bundle, test_qs, vectors)
    if val.cl_sentence is None or test.cl_sentence is None:
        raise ValueError(
            f"{bundle_dir}: the study compares against e5 CL; the bundle has no sentence encoder"
        )
    spaces_val = {"visual": val.cl_visual, "sentence": val.cl_sentence}
    spaces_test = {"visual": test.cl_visual, "sentence": test.cl_sentence}

    def mrr(space: str, alpha: float) -> float:
        return retrieval_metrics(fuse(spaces_test[space], test.cm, alpha), test_qs.relevant)["mrr"]

    rows: dict[str, dict[str, Any]] = {
        BASE: {"mrr": mrr("sentence", 1.0), "space": "sentence", "alpha": 1.0},
        "CL visual": {"mrr": mrr("visual", 1.0), "space": "visual", "alpha": 1.0},
        "CM": {"mrr": mrr("visual", 0.0), "space": "-", "alpha": 0.0},
    }
    for label, space in (("CLM visual (alpha on val)", "visual"), ("CLM e5 (alpha on val)", "sentence")):
        alpha, _ = choose_alpha(spaces_val[space], val.cm, val_qs.relevant)
        rows[label] = {"mrr": mrr(space, alpha), "space": space, "alpha": alpha}
    for label, rule in (("space+alpha best (max val MRR)", "best"), ("space+alpha 1se toward e5", "1se")):
        c = choose_fusion(spaces_val, val.cm, val_qs.relevant, rule, ("sentence", 1.0))
        rows[label] = {"mrr": mrr(c.cl_space, c.alpha), "space": c.cl_space, "alpha": c.alpha,
                       "eligible": c.eligible}  # fmt: skip
    for label, rule in (("simplex best (max val MRR)", "best"), (SERVED, "1se")):
        w, _, eligible = choose_simplex(val.cl_visual, val.cl_sentence, val.cm, val_qs.relevant, rule)
        fused = w[0] * test.cl_visual + w[1] * test.cl_sentence + w[2] * test.cm
        space = "joint" if w[0] > 0 and w[1] > 0 else ("visual" if w[0] > 0 else "sentence")
        rows[label] = {"mrr": retrieval_metrics(fused, test_qs.relevant)["mrr"], "space": space,
                       "alpha": w[0] + w[1], "weights": list(w), "eligible": eligible}  # fmt: skip
    return {"rows": rows, "val_queries": len(val_qs.queries), "test_queries": len(test_qs.queries),
            "candidates": len(test_qs.candidate_ids), "bundle": bundle.content_hash}  # fmt: skip


def study_table(per_seed: list[dict[str, Any]]) -> str:
    base = np.array([s["rows"][BASE]["mrr"] for s in per_seed])
    lines = [
        f"| choice | test MRR | gain over CL e5 zero-shot | seeds with gain >= +{BAR:.2f} | CL space chosen | alpha |",
        "|---|---|---|---|---|---|",
    ]
    for label in CHOICES:
        values = np.array([s["rows"][label]["mrr"] for s in per_seed])
        gain = values - base
        m, sd = mean_std(values.tolist())
        gm, gsd = mean_std(gain.tolist())
        spaces = [s["rows"][label]["space"] for s in per_seed]
        space = ", ".join(f"{k} x{spaces.count(k)}" for k in sorted(set(spaces)))
        am, asd = mean_std([s["rows"][label]["alpha"] for s in per_seed])
        hits = f"{int((gain >= BAR - 1e-12).sum())} of {len(per_seed)}" if label != BASE else "—"
        gain_cell = f"{gm:+.3f} ± {gsd:.3f}" if label != BASE else "—"
        name = f"**{label}**" if label == SERVED else label
        lines.append(
            f"| {name} | {m:.3f} ± {sd:.3f} | {gain_cell} | {hits} | {space} | {am:.2f} ± {asd:.2f} |"
        )
    return "\n".join(lines)


def split_table(per_seed: list[dict[str, Any]]) -> str:
    """Test MRR of each choice on each split, and the served weights (CL visual, CL e5, CM)."""
    head = (
        "| split | "
        + " | ".join(SHORT[c] for c in CHOICES)
        + " | served - CL e5 | served weights (vis, e5, CM) |"
    )
    lines = [head, "|" + "---|" * (len(CHOICES) + 3)]
    for s in per_seed:
        r = s["rows"]
        cells = " | ".join(f"{r[c]['mrr']:.3f}" for c in CHOICES)
        w = ", ".join(f"{x:.2f}" for x in r[SERVED]["weights"])
        lines.append(f"| seed {s['seed']} | {cells} | {r[SERVED]['mrr'] - r[BASE]['mrr']:+.3f} | {w} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="xlsearch fusion-study",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--runs", required=True, help="a retrieval run folder (xlsearch-train --runs)")
    ap.add_argument("--variant", default="e5-sentence-branch-joint-space-infonce", help="variant slug")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--out", help="per-seed rows (JSON); seeds already there with the same bundle are reused")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    runs = Path(args.runs)
    out = Path(args.out) if args.out else None
    done = {}
    if out is not None and out.is_file():
        done = {s["seed"]: s for s in json.loads(out.read_text(encoding="utf-8"))}
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    per_seed = []
    for k, seed in enumerate(seeds, 1):
        bundle_dir = runs / f"seed{seed}" / args.variant / "bundle"
        if not (bundle_dir / "manifest.json").is_file():
            raise SystemExit(
                f"xlsearch fusion-study: {bundle_dir}: no bundle (run xlsearch-train --seeds {seed})"
            )
        old = done.get(seed)
        if old and old.get("bundle") == Bundle(bundle_dir).content_hash and set(old["rows"]) == set(CHOICES):
            r, how = old, "kept"
        else:
            r = {"seed": seed, **seed_rows(bundle_dir, runs / "splits" / f"seed{seed}", runs / "cache" / "features",
                                           not args.no_progress)}  # fmt: skip
            how = "scored"
        per_seed.append(r)
        gain = r["rows"][SERVED]["mrr"] - r["rows"][BASE]["mrr"]
        print(f"[{k}/{len(seeds)}] seed {seed} ({how}): served {r['rows'][SERVED]['mrr']:.3f}, "
              f"CL e5 zero-shot {r['rows'][BASE]['mrr']:.3f}, gain {gain:+.3f}", flush=True)  # fmt: skip
        if out is not None:  # seeds of earlier runs that this one did not ask for stay in the file
            keep = [s for s in done.values() if s["seed"] not in seeds]
            out.write_text(
                json.dumps(sorted(keep + per_seed, key=lambda s: s["seed"]), indent=1), encoding="utf-8"
            )
    first = per_seed[0]
    print(f"\n{runs}: {first['test_queries']} test queries, {first['candidates']} candidates, "
          f"{first['val_queries']} validation queries per split\n")  # fmt: skip
    print(study_table(per_seed))
    print()
    print(split_table(per_seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
