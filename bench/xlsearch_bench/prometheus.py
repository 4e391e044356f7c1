"""The server's Prometheus metrics over one load level: scrape ``/metrics`` before and after, take the difference
and summarise the ``xlsearch_stage_seconds`` histograms per stage and the Search RPC duration (count, mean,
approximate p50/p95 interpolated within buckets, as Prometheus' ``histogram_quantile`` does)."""

from __future__ import annotations

import math
import urllib.request

from xlsearch.search.types import STAGES

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str | None) -> Samples:
    """Every sample of a /metrics page keyed by (name, sorted labels); empty when there is no URL or it fails."""
    if not url:
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def _diff(before: Samples, after: Samples, name: str, **labels: str) -> dict[tuple, float]:
    """after - before for samples called ``name`` whose labels include ``labels``."""
    out = {}
    for (n, lab), v in after.items():
        d = dict(lab)
        if n == name and all(d.get(k) == val for k, val in labels.items()):
            out[lab] = v - before.get((n, lab), 0.0)
    return out


def histogram_quantile(buckets: dict[float, float], q: float) -> float | None:
    """Prometheus-style quantile from cumulative bucket counts {upper bound: count} (linear within a bucket)."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank, lower, prev = q * total, 0.0, 0.0
    for b in bounds:
        c = buckets[b]
        if c >= rank:
            if math.isinf(b):
                return lower
            return lower + (b - lower) * ((rank - prev) / (c - prev) if c > prev else 1.0)
        lower, prev = b, c
    return lower


def _histogram(before: Samples, after: Samples, name: str, **labels: str) -> dict[str, float | None]:
    """Summary of the histogram ``name`` over the samples whose labels include ``labels`` (buckets of several
    label sets added up)."""
    s = sum(_diff(before, after, f"{name}_sum", **labels).values())
    n = sum(_diff(before, after, f"{name}_count", **labels).values())
    buckets: dict[float, float] = {}
    for lab, v in _diff(before, after, f"{name}_bucket", **labels).items():
        le = float(dict(lab)["le"])
        buckets[le] = buckets.get(le, 0.0) + v
    q50, q95 = histogram_quantile(buckets, 0.5), histogram_quantile(buckets, 0.95)
    return {
        "count": n,
        "mean_ms": 1e3 * s / n if n else None,
        "p50_ms": None if q50 is None else 1e3 * q50,
        "p95_ms": None if q95 is None else 1e3 * q95,
    }


def stage_metrics(before: Samples, after: Samples) -> dict[str, dict[str, float | None]]:
    """Per stage over one level: count, mean, approximate p50/p95 (ms) from ``xlsearch_stage_seconds``; plus the
    server-side Search RPC duration from ``xlsearch_grpc_request_duration_seconds`` (key ``rpc``)."""
    out = {stage: _histogram(before, after, "xlsearch_stage_seconds", stage=stage) for stage in STAGES}
    out["rpc"] = _histogram(
        before, after, "xlsearch_grpc_request_duration_seconds", method="Search", code="OK"
    )
    return out
