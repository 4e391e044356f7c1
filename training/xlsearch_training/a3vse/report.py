"""The sparse-annotation table (Markdown) from the per-run results of the A3VSE experiment."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from xlsearch.eval.metrics import mean_std

FULL, NO_SEMANTICS = "A3VSE full", "A3VSE w/o semantics"
FULL_TAG = "A3VSE full (tag concepts)"  # in-domain concepts from the run's tag classifier
# the text encoder with the frozen e5 sentence branch: (full, its w/o-semantics baseline with the same text encoder)
SENTENCE_PAIRS = (
    ("A3VSE full (e5)", "A3VSE w/o semantics (e5)"),
    ("A3VSE full (tag concepts + e5)", "A3VSE w/o semantics (e5)"),
    ("A3VSE full (e5 only)", "A3VSE w/o semantics (e5 only)"),
    ("A3VSE full (e5 + InfoNCE)", "A3VSE w/o semantics (e5 + InfoNCE)"),
)


def _pm(values: list[float]) -> str:
    m, s = mean_std(values)
    return f"{m:.3f} ± {s:.3f}"


def _mean(values: list[float]) -> float:
    return mean_std(values)[0]


def group(results: list[dict[str, Any]]) -> dict[float, dict[str, list[dict[str, Any]]]]:
    out: dict[float, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        out[r["fraction"]][r["variant"]].append(r)
    return out


def sparse_table(results: list[dict[str, Any]]) -> str:
    head = (
        "| Annotated | Model | CM MRR | t→i R@1 | t→i R@5 | t→i R@10 | i→t MRR | i→t R@1 | i→t R@5 | i→t R@10 "
        "| CLM (e5) MRR | seeds |"
    )
    lines = [head, "|" + "---|" * 12]
    for fraction, by_variant in sorted(group(results).items()):
        for name, runs in by_variant.items():
            t2i = [r["rows"]["CM"] for r in runs]
            i2t = [r["rows"]["CM i2t"] for r in runs]
            clm = [r["rows"]["CLM[sentence]"]["mrr"] for r in runs if "CLM[sentence]" in r["rows"]]
            cells = [_pm([x["mrr"] for x in t2i])]
            cells += [_pm([x[f"r@{k}"] for x in t2i]) for k in (1, 5, 10)]
            cells += [_pm([x["mrr"] for x in i2t])]
            cells += [_pm([x[f"r@{k}"] for x in i2t]) for k in (1, 5, 10)]
            cells.append(_pm(clm) if clm else "—")
            lines.append(f"| {fraction:.0%} | {name} | " + " | ".join(cells) + f" | {len(runs)} |")
    return "\n".join(lines)


def acceptance(
    results: list[dict[str, Any]], fraction: float = 0.2, full: str = FULL, bare_name: str = NO_SEMANTICS
) -> str:
    """`full` vs w/o semantics on CM MRR at `fraction`: over the seeds every variant ran, and, when the pair has
    more seeds, over all of the pair's seeds."""
    by_variant = group(results).get(fraction, {})
    if full not in by_variant or bare_name not in by_variant:
        return f"(acceptance check needs {full!r} and {bare_name!r} at {fraction:.0%})"
    common = set.intersection(*({r["seed"] for r in runs} for runs in by_variant.values()))
    pair = {r["seed"] for r in by_variant[full]} & {r["seed"] for r in by_variant[bare_name]}
    lines = []
    for seeds in [sorted(common)] + ([sorted(pair)] if pair != common else []):
        with_sem = {r["seed"]: r["rows"]["CM"]["mrr"] for r in by_variant[full] if r["seed"] in seeds}
        bare = {r["seed"]: r["rows"]["CM"]["mrr"] for r in by_variant[bare_name] if r["seed"] in seeds}
        a, b = [with_sem[s] for s in seeds], [bare[s] for s in seeds]
        wins = sum(x > y for x, y in zip(a, b, strict=True))
        verdict = "beats" if _mean(a) > _mean(b) else "does NOT beat"
        lines.append(
            f"At {fraction:.0%} annotations, {full} {verdict} {bare_name} on CM MRR over seeds "
            f"{','.join(map(str, seeds))}: mean {_mean(a):.3f} vs {_mean(b):.3f} (higher on {wins} of "
            f"{len(seeds)} splits; per split {' / '.join(f'{x:.3f}' for x in a)} vs "
            f"{' / '.join(f'{y:.3f}' for y in b)})."
        )
    return "\n\n".join(lines)


def format_a3vse_results(results: list[dict[str, Any]], coverage_zh: dict[str, float], pool: int) -> str:
    if not results:
        return "(no results)"
    r0 = results[0]
    seeds = sorted({r["seed"] for r in results})
    parts = [
        f"Test split of each seeded Tux Paint split (seeds {','.join(map(str, seeds))}; {r0['queries']} zh queries, "
        f"{r0['candidates']} candidate images); mean ± std over seeds. t→i: zh sentence -> image (CM), i→t: image "
        f"-> zh sentence. Extra un-annotated pool: {pool} images; zh concept coverage through CC-CEDICT: "
        + ", ".join(f"{k} {v:.0%}" for k, v in coverage_zh.items())
        + ".",
        "",
        sparse_table(results),
        "",
        acceptance(results),
    ]
    if any(r["variant"] == FULL_TAG for r in results):
        parts += ["", acceptance(results, full=FULL_TAG)]
    names = {r["variant"] for r in results}
    for full, bare in SENTENCE_PAIRS:
        if full in names and bare in names:
            parts += ["", acceptance(results, full=full, bare_name=bare)]
    return "\n".join(parts)
