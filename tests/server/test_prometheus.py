"""A real `prometheus` binary scrapes a real test server's metrics port on 127.0.0.1: the xlsearch series arrive with
the right labels, every Grafana dashboard query evaluates on them, and the alert rules load and evaluate cleanly."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from server_support import ServedPair, ServerThread, free_port, session_pair, test_settings

REPO = Path(__file__).resolve().parents[2]
if importlib.util.find_spec("xlsearch_client") is None:  # not pip-installed: use the source checkout
    sys.path.insert(0, str(REPO / "clients"))

from xlsearch_client import Client, XlsearchError  # noqa: E402

PROMETHEUS = shutil.which("prometheus")
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "xlsearch.json"
ALERTS = REPO / "deploy" / "alerts.yml"
WAIT_SECONDS = 30
SEARCHES = 4
# No panel query may come back empty, except these (nothing fails in a memory-cache test run).
MAY_BE_EMPTY = {"Cache backend errors"}

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="the prometheus binary is not installed")

_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


class PrometheusProcess:
    """prometheus on 127.0.0.1:<free port>, scraping `targets` every second, with temporary storage."""

    def __init__(self, workdir: Path, targets: list[str], rule_files: list[Path]) -> None:
        assert PROMETHEUS is not None
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": "xlsearch", "static_configs": [{"targets": targets}]}],
        }
        config_file = workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log = workdir / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait(lambda: self._get("/-/ready", raw=True) is not None, "ready")

    def _get(self, path: str, raw: bool = False) -> Any:
        try:
            with _http.open(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                body = resp.read()
        except OSError:
            return None
        return body if raw else json.loads(body)

    def api(self, path: str, **params: str) -> Any:
        body = self._get(f"/api/v1/{path}?{urllib.parse.urlencode(params)}")
        assert body is not None and body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited ({self.proc.returncode}): {self.log.read_text()}")
            if ready():
                return
            time.sleep(0.2)
        raise AssertionError(f"prometheus: not {what} after {WAIT_SECONDS}s; log:\n{self.log.read_text()}")

    def wait_for(self, expr: str, what: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []

        def ready() -> bool:
            found[:] = self.query(expr)
            return bool(found)

        self._wait(ready, what)
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="session")
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ServedPair:
    return session_pair(request, tmp_path_factory)


@pytest.fixture(scope="module")
def server(pair: ServedPair, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    st = ServerThread(
        test_settings(bundle=pair.bundle, index=pair.index_copy(tmp_path_factory.mktemp("prom")), http_port=0)
    )
    assert st.wait_ready(), st.server.slot.error
    assert st.server.metrics_port
    yield st
    st.stop()


def traffic(server: ServerThread) -> None:
    with Client(server.address, timeout=30) as client:
        for mode in ["CL", "CM", "CLM", "CLM"][:SEARCHES]:
            client.search("一只红色的袋鼠", top_k=3, mode=mode)  # the second CLM one is a cache hit
        with pytest.raises(XlsearchError):
            client.search("")  # INVALID_ARGUMENT
        client.stats()
    base = f"http://127.0.0.1:{server.server.http_port}"  # the HTTP panels: a search and a refused one
    for body, ok in ((b'{"query": "\xe8\xa2\x8b\xe9\xbc\xa0", "top_k": 3}', True), (b'{"query": ""}', False)):
        req = urllib.request.Request(f"{base}/v1/search", body, {"Content-Type": "application/json"})
        try:
            with _http.open(req, timeout=30) as resp:
                assert ok and resp.status == 200
        except urllib.error.HTTPError as e:
            assert not ok and e.code == 400


@pytest.fixture(scope="module")
def prometheus(server: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusProcess]:
    traffic(server)
    prom = PrometheusProcess(
        tmp_path_factory.mktemp("prometheus"), [f"127.0.0.1:{server.server.metrics_port}"], [ALERTS]
    )
    try:
        yield prom
    finally:
        prom.stop()


def test_xlsearch_series_arrive_with_their_labels(prometheus: PrometheusProcess, server: ServerThread):
    instance = f"127.0.0.1:{server.server.metrics_port}"
    series = prometheus.wait_for("xlsearch_grpc_requests_total", "scraping xlsearch_grpc_requests_total")
    by_call = {(s["metric"]["method"], s["metric"]["code"]): float(s["value"][1]) for s in series}
    assert by_call[("Search", "OK")] == SEARCHES
    assert by_call[("Search", "INVALID_ARGUMENT")] == 1 and by_call[("GetStats", "OK")] == 1
    for s in series:
        assert s["metric"]["job"] == "xlsearch" and s["metric"]["instance"] == instance
        assert s["metric"]["service"] == "xlsearch.v1.ImageSearch"
    assert float(prometheus.query('up{job="xlsearch"}')[0]["value"][1]) == 1
    assert float(prometheus.query("xlsearch_ready")[0]["value"][1]) == 1
    hits = prometheus.query('xlsearch_cache_hits_total{cache="result"}')
    assert float(hits[0]["value"][1]) >= 1
    stages = {s["metric"]["stage"] for s in prometheus.query("xlsearch_stage_seconds_count > 0")}
    assert stages == {"tokenize", "encode", "search", "fuse", "metadata"}
    assert instance in prometheus.api("label/instance/values", **{"match[]": "xlsearch_ready"})


def grafana_to_promql(expr: str) -> str:
    """What Grafana sends for "All" instances and methods, with a rate window that spans several 1 s scrapes."""
    return expr.replace("$__rate_interval", "10s").replace("$instance", ".*").replace("$method", ".*")


def test_every_dashboard_query_evaluates(prometheus: PrometheusProcess, server: ServerThread):
    # rate() needs two samples in its window: wait for a few scrapes, with calls in between.
    prometheus.wait_for("count_over_time(xlsearch_ready[10s]) >= 3", "three scrapes")
    traffic(server)
    prometheus.wait_for(
        f"xlsearch_grpc_requests_total{{method='Search', code='OK'}} > {SEARCHES}", "new calls"
    )
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    empty = []
    queries = [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]
    for title, expr in queries:
        if not prometheus.query(grafana_to_promql(expr)):  # also fails the test if Prometheus rejects it
            empty.append(title)
    assert set(empty) <= MAY_BE_EMPTY, empty
    rate = prometheus.query(grafana_to_promql(queries[0][1]))
    assert any(s["metric"].get("method") == "Search" and float(s["value"][1]) > 0 for s in rate)


def test_alert_rules_load_and_evaluate(prometheus: PrometheusProcess):
    def evaluated() -> bool:
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        return (
            bool(rules)
            and all(r.get("lastEvaluation", "").startswith("2") for r in rules)
            and all(r["health"] != "unknown" for r in rules)
        )

    prometheus._wait(evaluated, "evaluating the alert rules")
    rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
    assert {r["name"] for r in rules} >= {"XlsearchDown", "XlsearchNotReady", "XlsearchCacheDown"}
    assert all(r["health"] == "ok" and not r.get("lastError") for r in rules), rules
    assert not [r["name"] for r in rules if r["state"] == "firing"]  # a healthy server fires nothing
