"""Does the served fusion choice hold on unseen data? Every fixed choice against the choice rules, over seeded splits.

For each seed's bundle (``<runs>/seed<N>/<variant>/bundle``) and split (``<runs>/splits/seed<N>``) the validation and
test scores of CL in each space and of CM are computed once (`xlsearch.eval.benchmark.score`); then each choice is
applied to the test split:

- fixed: CL e5 zero-shot (the peer baseline: no training, no validation), CL in the visual space, CM, CLM in each
  space with alpha grid-searched on validation;
- rules: ``best`` (the (space, alpha) with the highest validation MRR: what bundles were served with before) and
  ``1se`` (the one-standard-error rule toward zero-shot e5, `xlsearch.eval.fusion.choose_fusion`: the served one).

The table gives test MRR (mean ± std over seeds), the paired gain over CL e5 zero-shot, and on how many seeds the
gain reaches the bar (+0.05 MRR).

    python -m xlsearch.eval.fusion_study --runs runs/demo --variant e5-sentence-branch-joint-space-infonce \\
        --seeds 0,1,2,3,4 --out runs/demo/fusion_study.json
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

__all__ = ["BAR", "CHOICES", "main", "seed_rows", "study_table"]

BAR = 0.05  # the held-out bar: served CLM at least this much MRR above zero-shot e5 CL
CHOICES = (
    "CL e5 zero-shot",
    "CL visual",
    "CM",
    "CLM visual (alpha on val)",
    "CLM e5 (alpha on val)",
    "rule best (max val MRR)",
    "rule 1se toward e5 (served)",
    "simplex best (max val MRR)",
    "simplex 1se toward e5",
)


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
        "CL e5 zero-shot": {"mrr": mrr("sentence", 1.0), "space": "sentence", "alpha": 1.0},
        "CL visual": {"mrr": mrr("visual", 1.0), "space": "visual", "alpha": 1.0},
        "CM": {"mrr": mrr("visual", 0.0), "space": "-", "alpha": 0.0},
    }
    for label, space in (("CLM visual (alpha on val)", "visual"), ("CLM e5 (alpha on val)", "sentence")):
        alpha, _ = choose_alpha(spaces_val[space], val.cm, val_qs.relevant)
        rows[label] = {"mrr": mrr(space, alpha), "space": space, "alpha": alpha}
    for label, rule in (("rule best (max val MRR)", "best"), ("rule 1se toward e5 (served)", "1se")):
        c = choose_fusion(spaces_val, val.cm, val_qs.relevant, rule, ("sentence", 1.0))
        rows[label] = {
            "mrr": mrr(c.cl_space, c.alpha),
            "space": c.cl_space,
            "alpha": c.alpha,
            "eligible": c.eligible,
        }
    for label, rule in (("simplex best (max val MRR)", "best"), ("simplex 1se toward e5", "1se")):
        w, _, eligible = choose_simplex(val.cl_visual, val.cl_sentence, val.cm, val_qs.relevant, rule)
        fused = w[0] * test.cl_visual + w[1] * test.cl_sentence + w[2] * test.cm
        rows[label] = {"mrr": retrieval_metrics(fused, test_qs.relevant)["mrr"], "space": "joint",
                       "alpha": w[0] + w[1], "weights": w, "eligible": eligible}  # fmt: skip
    return {"rows": rows, "val_queries": len(val_qs.queries), "test_queries": len(test_qs.queries),
            "candidates": len(test_qs.candidate_ids)}  # fmt: skip


def study_table(per_seed: list[dict[str, Any]]) -> str:
    base = np.array([s["rows"]["CL e5 zero-shot"]["mrr"] for s in per_seed])
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
        hits = int((gain >= BAR - 1e-12).sum()) if label != "CL e5 zero-shot" else "-"
        gain_cell = f"{gm:+.3f} ± {gsd:.3f}" if label != "CL e5 zero-shot" else "—"
        lines.append(
            f"| {label} | {m:.3f} ± {sd:.3f} | {gain_cell} | {hits} of {len(per_seed)} | {space} | {am:.2f} ± {asd:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True, help="a retrieval run folder (xlsearch-train --runs)")
    ap.add_argument("--variant", default="e5-sentence-branch-joint-space-infonce", help="variant slug")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--out", help="write the per-seed rows here (JSON)")
    args = ap.parse_args(argv)
    runs = Path(args.runs)
    per_seed = []
    for seed in (int(s) for s in args.seeds.split(",") if s.strip()):
        r = seed_rows(runs / f"seed{seed}" / args.variant / "bundle", runs / "splits" / f"seed{seed}",
                      runs / "cache" / "features")  # fmt: skip
        per_seed.append({"seed": seed, **r})
        print(f"seed {seed}: " + ", ".join(f"{k} {v['mrr']:.3f}" for k, v in r["rows"].items()))
    first = per_seed[0]
    print(f"\n{first['test_queries']} test queries, {first['candidates']} candidates, "
          f"{first['val_queries']} validation queries per split\n")  # fmt: skip
    print(study_table(per_seed))
    if args.out:
        Path(args.out).write_text(json.dumps(per_seed, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
