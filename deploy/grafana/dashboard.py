"""Build the Grafana dashboard `dashboards/xlsearch.json` from the metric names in docs/serving.md.

    python deploy/grafana/dashboard.py            # rewrite deploy/grafana/dashboards/xlsearch.json
    python deploy/grafana/dashboard.py --check    # exit 1 if the committed JSON is not what this script writes

The dashboard is code so panels stay consistent (same selectors, units, legends) and a test can check every query
against the server's metric definitions and run it on a real Prometheus (tests/test_deploy.py,
tests/test_prometheus.py). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards" / "xlsearch.json"
UID = "xlsearch-server"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'instance=~"$instance"'  # every query is limited to the chosen server instances
RPC = f'{SEL}, method=~"$method"'
RATE = "$__rate_interval"


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> dict[str, Any]:
    t: dict[str, Any] = {
        "datasource": DATASOURCE,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "refId": ref,
    }
    if instant:
        t.update(instant=True, range=False, format="table")
    return t


def quantiles(metric: str, by: str, selector: str, legend: str) -> list[dict[str, Any]]:
    return [
        target(
            f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"p{round(q * 100)} {legend}",
            ref,
        )
        for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
    ]


class Layout:
    """Panels on Grafana's 24-column grid, left to right, top to bottom; rows span the full width."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = self.row_h = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "id": len(self.panels) + 1,
                "collapsed": False,
                "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1},
                "panels": [],
            }
        )
        self.y += 1

    def _newline(self) -> None:
        self.y += self.row_h
        self.x = self.row_h = 0

    def add(self, panel: dict[str, Any], w: int, h: int) -> None:
        if self.x + w > 24:
            self._newline()
        panel.update(id=len(self.panels) + 1, gridPos={"x": self.x, "y": self.y, "w": w, "h": h})
        panel.setdefault("datasource", DATASOURCE)
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


def timeseries(title: str, targets: list[dict[str, Any]], unit: str, description: str = "") -> dict[str, Any]:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": {
            "defaults": {"unit": unit, "custom": {"fillOpacity": 10, "showPoints": "never"}},
            "overrides": [],
        },
        "options": {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "calcs": ["mean", "max", "lastNotNull"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(title: str, targets: list[dict[str, Any]], unit: str = "short", **defaults: Any) -> dict[str, Any]:
    return {
        "type": "stat",
        "title": title,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit, **defaults}, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
        },
    }


UP_DOWN = {
    "mappings": [
        {
            "type": "value",
            "options": {"0": {"text": "DOWN", "color": "red"}, "1": {"text": "UP", "color": "green"}},
        }
    ],
    "thresholds": {
        "mode": "absolute",
        "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}],
    },
}


def panels() -> list[dict[str, Any]]:
    g = Layout()
    g.row("gRPC")
    g.add(
        timeseries(
            "Request rate by method and code",
            [
                target(
                    f"sum by (method, code) (rate(xlsearch_grpc_requests_total{{{RPC}}}[{RATE}]))",
                    "{{method}} {{code}}",
                )
            ],
            "reqps",
        ),
        12,
        8,
    )
    g.add(
        timeseries(
            "Latency p50 / p95 / p99 by method and code",
            quantiles("xlsearch_grpc_request_duration_seconds", "method, code", RPC, "{{method}} {{code}}"),
            "s",
        ),
        12,
        8,
    )
    g.add(
        timeseries(
            "Failed calls (share of all calls) by method",
            [
                target(
                    f'sum by (method) (rate(xlsearch_grpc_requests_total{{{RPC}, code!="OK"}}[{RATE}]))'
                    f" / sum by (method) (rate(xlsearch_grpc_requests_total{{{RPC}}}[{RATE}]))",
                    "{{method}}",
                )
            ],
            "percentunit",
        ),
        12,
        8,
    )
    g.add(
        timeseries(
            "Calls in flight",
            [target(f"sum by (method) (xlsearch_grpc_requests_in_flight{{{RPC}}})", "{{method}}")],
            "short",
        ),
        12,
        8,
    )
    g.row("HTTP/JSON API and web page")
    g.add(
        timeseries(
            "HTTP request rate by route and status",
            [
                target(
                    f"sum by (route, status) (rate(xlsearch_http_requests_total{{{SEL}}}[{RATE}]))",
                    "{{route}} {{status}}",
                )
            ],
            "reqps",
        ),
        8,
        8,
    )
    g.add(
        timeseries(
            "HTTP latency p50 / p95 / p99 by route",
            quantiles("xlsearch_http_request_duration_seconds", "route", SEL, "{{route}}"),
            "s",
        ),
        8,
        8,
    )
    g.add(
        timeseries(
            "HTTP requests in flight",
            [target(f"sum by (route) (xlsearch_http_requests_in_flight{{{SEL}}})", "{{route}}")],
            "short",
        ),
        8,
        8,
    )
    g.row("Search stages (computed searches; cached answers skip them)")
    g.add(
        timeseries(
            "Stage latency p50 / p95 / p99",
            quantiles("xlsearch_stage_seconds", "stage", SEL, "{{stage}}"),
            "s",
        ),
        12,
        8,
    )
    g.add(
        timeseries(
            "Mean stage time",
            [
                target(
                    f"sum by (stage) (rate(xlsearch_stage_seconds_sum{{{SEL}}}[{RATE}]))"
                    f" / sum by (stage) (rate(xlsearch_stage_seconds_count{{{SEL}}}[{RATE}]))",
                    "{{stage}}",
                )
            ],
            "s",
        ),
        12,
        8,
    )
    g.row("Cache")
    g.add(
        timeseries(
            "Cache hit ratio",
            [
                target(
                    f"sum by (cache) (rate(xlsearch_cache_hits_total{{{SEL}}}[{RATE}]))"
                    f" / (sum by (cache) (rate(xlsearch_cache_hits_total{{{SEL}}}[{RATE}]))"
                    f" + sum by (cache) (rate(xlsearch_cache_misses_total{{{SEL}}}[{RATE}])))",
                    "{{cache}}",
                )
            ],
            "percentunit",
            "result: whole answers; embedding: query vectors shared by every mode and top_k",
        ),
        12,
        8,
    )
    g.add(
        stat(
            "Cache up", [target(f"xlsearch_cache_up{{{SEL}}}", "{{instance}} {{backend}}")], "none", **UP_DOWN
        ),
        6,
        8,
    )
    g.add(
        timeseries(
            "Cache backend errors",
            [target(f"sum by (backend) (rate(xlsearch_cache_errors_total{{{SEL}}}[{RATE}]))", "{{backend}}")],
            "ops",
        ),
        6,
        8,
    )
    g.row("Index and errors")
    g.add(stat("Ready", [target(f"xlsearch_ready{{{SEL}}}", "{{instance}}")], "none", **UP_DOWN), 4, 6)
    g.add(
        stat(
            "Index size",
            [
                target(f"sum(xlsearch_index_images{{{SEL}}})", "images", "A"),
                target(f"sum(xlsearch_index_captions{{{SEL}}})", "with a caption", "B"),
            ],
        ),
        6,
        6,
    )
    g.add(stat("Index version", [target(f"max(xlsearch_index_version{{{SEL}}})", "version")]), 4, 6)
    g.add(
        timeseries(
            "Images added / deleted",
            [
                target(f"sum(rate(xlsearch_images_added_total{{{SEL}}}[{RATE}]))", "added", "A"),
                target(f"sum(rate(xlsearch_images_deleted_total{{{SEL}}}[{RATE}]))", "deleted", "B"),
            ],
            "ops",
        ),
        10,
        6,
    )
    g.add(
        timeseries(
            "Errors by kind and code",
            [
                target(
                    f"sum by (kind, code) (rate(xlsearch_errors_total{{{SEL}}}[{RATE}]))", "{{kind}} {{code}}"
                )
            ],
            "ops",
            "kind = exception class; INTERNAL errors are bugs (the traceback is in the server log)",
        ),
        14,
        8,
    )
    g.add(
        timeseries(
            "Refused credentials by reason",
            [target(f"sum by (reason) (rate(xlsearch_auth_failures_total{{{SEL}}}[{RATE}]))", "{{reason}}")],
            "ops",
            "API key refusals: missing, malformed, unknown_key (UNAUTHENTICATED), role (PERMISSION_DENIED)",
        ),
        10,
        8,
    )
    g.add(
        {
            "type": "table",
            "title": "Build (version, bundle, index)",
            "targets": [target(f"xlsearch_build_info{{{SEL}}}", instant=True)],
            "transformations": [
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True, "Value": True, "__name__": True, "job": True}
                    },
                }
            ],
        },
        10,
        8,
    )
    return g.panels


def variable(name: str, query: str, label: str) -> dict[str, Any]:
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-query"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def dashboard() -> dict[str, Any]:
    return {
        "uid": UID,
        "title": "xlsearch server",
        "description": "gRPC traffic, latency, search stages, cache and index of xlsearch servers (docs/serving.md)",
        "tags": ["xlsearch"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "type": "datasource",
                    "name": "datasource",
                    "label": "Prometheus",
                    "query": "prometheus",
                    "current": {"text": "Prometheus", "value": "xlsearch-prometheus"},
                },
                variable("instance", "label_values(xlsearch_ready, instance)", "Instance"),
                variable("method", "label_values(xlsearch_grpc_requests_total, method)", "Method"),
            ]
        },
        "annotations": {"list": []},
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only compare with the committed file")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is out of date: run python deploy/grafana/dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(OUT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
