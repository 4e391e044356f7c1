"""Benchmark tables over runs benchmarked at different times (a row added later is missing from older runs)."""

from __future__ import annotations

from xlsearch.eval.report import detail_table


def _run(seed: int, **rows: float) -> dict:
    return {"seed": seed, "rows": {k: {"mrr": v, "r@1": v, "r@5": v, "r@10": v} for k, v in rows.items()}}


def test_a_row_missing_from_older_runs_is_averaged_over_the_runs_that_have_it():
    old, new = _run(0, CM=0.4), _run(1, CM=0.6, **{"CM i2t": 0.5})
    for runs in ([old, new], [new, old]):
        table = detail_table(runs)
        assert "| CM | 0.500 ± 0.100 |" in table or "| CM | 0.500 ± 0.141 |" in table
        assert "(1 of 2 seeds) | 0.500 ± 0.000 |" in table
