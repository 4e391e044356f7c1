"""deploy/ without Docker: Prometheus config and alert rules through promtool, every Grafana query against the
server's metric definitions, compose.yaml and the Dockerfiles cross-checked, and the Dockerfiles' wheel stage (proto
build + both wheels) run for real in a temporary copy of the sources."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from xlsearch_server.metrics import ServerMetrics

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "xlsearch.json"
DOCKERFILES = {"server": DEPLOY / "server.Dockerfile", "indexer": DEPLOY / "indexer.Dockerfile"}
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")

METRIC = re.compile(r"\b(xlsearch_[a-z0-9_]+)\b")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
TARGET_LABELS = {"instance", "job"}  # added by Prometheus to every scraped series


# -- the server's series -------------------------------------------------------------------------------------------


def server_series() -> dict[str, set[str]]:
    """Every sample name the server can export -> its label names (from a fresh ServerMetrics, nothing running)."""
    metrics = ServerMetrics(CollectorRegistry())
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    out: dict[str, set[str]] = {}
    for wrapper in vars(metrics).values():
        name, kind = getattr(wrapper, "_name", None), getattr(wrapper, "_type", None)
        if not name or kind not in suffixes:
            continue
        labels = set(
            getattr(wrapper, "_labelnames", ())
        )  # prometheus-client keeps them here (no public getter)
        if kind == "info":
            labels |= {"version", "bundle_hash", "index_hash"}
        for suffix in suffixes[kind]:
            out[f"{name}{suffix}"] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


def check_expr(expr: str, series: dict[str, set[str]]) -> list[str]:
    """Problems of one PromQL expression: unknown xlsearch series, labels those series do not carry."""
    names = set(METRIC.findall(expr))
    problems = [f"unknown series {n}" for n in sorted(names - set(series))]
    allowed = set().union(*(series.get(n, set()) for n in names)) | TARGET_LABELS
    used = {label.strip() for group in GROUPING.findall(expr) for label in group.split(",") if label.strip()}
    used |= set(MATCHER.findall(expr))
    problems += [f"label {label!r} is not on {sorted(names)}" for label in sorted(used - allowed)]
    return problems


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every query, including the template variables' queries."""
    out = [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]
    out += [
        (f"variable {v['name']}", v["definition"])
        for v in board["templating"]["list"]
        if v["type"] == "query"
    ]
    return out


def documented_series() -> list[str]:
    text = (REPO / "docs" / "serving.md").read_text(encoding="utf-8")
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return sorted(set(re.findall(r"`(xlsearch_[a-z0-9_]+)`", section)))


# -- Prometheus ----------------------------------------------------------------------------------------------------


@needs_promtool
def test_promtool_accepts_the_config_and_the_rules():
    run = subprocess.run(
        [PROMTOOL, "check", "config", str(DEPLOY / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 rule files found" in run.stdout + run.stderr


@needs_promtool
def test_alert_rules_fire_as_intended():
    run = subprocess.run(
        [PROMTOOL, "test", "rules", "alerts_test.yml"], capture_output=True, text=True, cwd=DEPLOY, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_alert_rules_query_real_series():
    series = server_series()
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text(encoding="utf-8"))
    exprs = [r["expr"] for group in rules["groups"] for r in group["rules"]]
    assert len(exprs) >= 5
    problems = {e: check_expr(e, series) for e in exprs}
    assert not {e: p for e, p in problems.items() if p}


def test_prometheus_scrapes_the_compose_server_metrics_port():
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "xlsearch")
    [target] = [t for sc in job["static_configs"] for t in sc["targets"]]
    host, port = target.split(":")
    server = compose["services"][host]
    assert server["environment"]["XLSEARCH_METRICS_PORT"] == port
    assert all(
        "service" not in sc.get("labels", {}) for sc in job["static_configs"]
    )  # clashes with gRPC label


# -- Grafana -------------------------------------------------------------------------------------------------------


def test_dashboard_json_is_what_the_generator_writes():
    spec = importlib.util.spec_from_file_location("xlsearch_dashboard", DEPLOY / "grafana" / "dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0, "run: python deploy/grafana/dashboard.py"


def test_dashboard_queries_only_series_the_server_exports():
    series = server_series()
    queries = dashboard_queries(dashboard())
    assert len(queries) >= 15
    problems = {f"{title}: {expr}": check_expr(expr, series) for title, expr in queries}
    assert not {q: p for q, p in problems.items() if p}


def test_dashboard_covers_every_documented_series():
    series = server_series()
    documented = documented_series()
    assert len(documented) >= 15, documented
    used = {name for _, expr in dashboard_queries(dashboard()) for name in METRIC.findall(expr)}
    for name in documented:
        assert any(n == name or n.startswith(name + "_") for n in series), (
            f"docs name {name}; the server does not"
        )
        assert any(n == name or n.startswith(name + "_") for n in used), f"no panel shows {name}"


def test_dashboard_structure():
    board = dashboard()
    panels = board["panels"]
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["targets"], p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
        for t in [p, *p["targets"]]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    names = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "instance", "method"} <= names
    titles = " ".join(p["title"] for p in panels).lower()
    for needed in ("request rate", "p99", "stage", "hit ratio", "cache up", "index size", "errors by kind"):
        assert needed in titles


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    prov = DEPLOY / "grafana" / "provisioning"
    [source] = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text(encoding="utf-8"))[
        "datasources"
    ]
    assert source["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    default = next(v for v in dashboard()["templating"]["list"] if v["name"] == "datasource")
    assert default["current"]["value"] == source["uid"]
    [provider] = yaml.safe_load((prov / "dashboards" / "xlsearch.yml").read_text(encoding="utf-8"))[
        "providers"
    ]
    mounts = dict(
        v.rsplit(":", 2)[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./")
    )
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


# -- compose + Dockerfiles -----------------------------------------------------------------------------------------


def test_compose_file_is_consistent():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"server", "redis", "prometheus", "grafana", "indexer"} <= set(services)
    server = services["server"]
    assert (REPO / server["build"]["dockerfile"]).resolve() == DOCKERFILES["server"]
    assert (DEPLOY / server["build"]["context"]).resolve() == REPO
    assert (REPO / services["indexer"]["build"]["dockerfile"]).resolve() == DOCKERFILES["indexer"]
    assert server["environment"]["XLSEARCH_REDIS_URL"].startswith("redis://redis:6379")
    assert server["depends_on"]["redis"]["condition"] == "service_healthy"
    exposed = set(re.findall(r"^EXPOSE (.+)$", DOCKERFILES["server"].read_text(), re.M)[0].split())
    published = {p.rsplit(":", 1)[1] for p in server["ports"]}
    env = server["environment"]
    assert published == exposed == {env["XLSEARCH_PORT"], "9464", env["XLSEARCH_HTTP_PORT"]}
    for service in services.values():  # published on loopback only
        assert all(str(p).startswith("127.0.0.1:") for p in service.get("ports", []))
    for service in services.values():  # every config file mounted from deploy/ exists
        for volume in service.get("volumes", []):
            if isinstance(volume, str) and volume.startswith("./"):
                assert (DEPLOY / volume.split(":")[0]).exists(), volume
    assert "index" in services["indexer"]["profiles"]
    assert set(compose["volumes"]) >= {"xlsearch-data"}


def stages(dockerfile: Path) -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text(encoding="utf-8"))
    out: dict[str, list[str]] = {}
    current = "preamble"
    for line in (raw.strip() for raw in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        if m := re.match(r"FROM \S+ AS (\S+)", line):
            current = m.group(1)
        out.setdefault(current, []).append(line)
    return out


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_is_slim_non_root_and_torch_free(kind: str):
    dockerfile = DOCKERFILES[kind]
    text = dockerfile.read_text(encoding="utf-8")
    parts = stages(dockerfile)
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in parts["preamble"]
    final = parts[kind]
    assert final[0] == f"FROM ${{PYTHON_IMAGE}} AS {kind}"
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    installs = [step for line in final for step in line.split("&&") if "pip install" in step]
    assert installs and not any(re.search(r"torch|open.clip|\[train\]", step) for step in installs)
    for line in parts["wheels"]:
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
    entry = json.loads(next(line for line in final if line.startswith("ENTRYPOINT")).split(None, 1)[1])
    assert entry[:2] == ["python", "-m"] and importlib.util.find_spec(entry[2]) is not None
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore").read_text(encoding="utf-8")
    assert "*_pb2.py" in ignore and "!clients/" in ignore  # the build generates its own protobuf code
    if kind == "server":
        [health] = [line for line in final if line.startswith("HEALTHCHECK")]
        assert "xlsearch-client" in health and " health" in health and "|| exit 1" in health
        assert set(re.findall(r"^EXPOSE (.+)$", text, re.M)[0].split()) == {"50051", "9464", "8080"}  # + HTTP
        env = " ".join(line for line in final if line.startswith("ENV "))
        assert "XLSEARCH_HOST=0.0.0.0" in env


def test_both_dockerfiles_build_their_wheels_the_same_way():
    server, indexer = (stages(p)["wheels"] for p in DOCKERFILES.values())
    assert server == indexer


# -- the wheel stage for real --------------------------------------------------------------------------------------


def _copy_build_context(dest: Path) -> None:
    ignore = shutil.ignore_patterns(
        "__pycache__", "*.egg-info", "*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py", "build", "dist"
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    for line in stages(DOCKERFILES["server"])["wheels"]:
        if line.startswith("COPY ") and line.split()[1].endswith("/"):
            source = line.split()[1].rstrip("/")
            shutil.copytree(REPO / source, dest / source, ignore=ignore)


def _requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(zf.read(meta).decode())
    return [r for r in message.get_all("Requires-Dist", []) if "extra ==" not in r]


def test_wheel_stage_builds_a_light_client_and_the_serving_package(tmp_path: Path):
    """What `RUN python proto/build.py && pip wheel --no-deps --no-build-isolation ... . ./clients` does in the
    Dockerfiles, here offline with the venv's setuptools and grpcio-tools. Then the client is rebuilt from its
    sdist away from the repository (no ../proto) and imported from the wheel alone."""
    src, wheels = tmp_path / "src", tmp_path / "wheels"
    src.mkdir()
    _copy_build_context(src)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run([sys.executable, "proto/build.py"], cwd=src, check=True, capture_output=True, timeout=120)
    pip_wheel = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "--wheel-dir",
    ]
    run = subprocess.run(
        [*pip_wheel, str(wheels), ".", "./clients"],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    [server_wheel] = wheels.glob("xlsearch-*.whl")
    [client_wheel] = wheels.glob("xlsearch_client-*.whl")

    with zipfile.ZipFile(server_wheel) as zf:
        names = set(zf.namelist())
    assert {"xlsearch/v1/search_pb2.py", "xlsearch_server/cli.py", "xlsearch_indexer/cli.py"} <= names
    assert not any(re.match(r"(torch|torchvision|open.clip)\b", r) for r in _requires(server_wheel))

    with zipfile.ZipFile(client_wheel) as zf:
        names = set(zf.namelist())
        scripts = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert {"xlsearch_client/_proto/search_pb2.py", "xlsearch_client/_proto/search_pb2.pyi"} <= names
    assert "xlsearch_client/py.typed" in names and "xlsearch-client = xlsearch_client.cli:main" in scripts
    assert not any(n.startswith("xlsearch/") or n.endswith("_pb2_grpc.py") for n in names)
    assert sorted(r.split(">")[0].split("=")[0].strip() for r in _requires(client_wheel)) == [
        "grpcio",
        "protobuf",
    ]

    # sdist -> wheel without the repository around it: the sdist carries the generated modules.
    sdist_dir, away = tmp_path / "sdist", tmp_path / "away"
    build_sdist = "from setuptools import build_meta as b; print(b.build_sdist(__import__('sys').argv[1]))"
    run = subprocess.run(
        [sys.executable, "-c", build_sdist, str(sdist_dir)],
        cwd=src / "clients",
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    shutil.unpack_archive(sdist_dir / run.stdout.strip().splitlines()[-1], away)
    [unpacked] = away.iterdir()
    run = subprocess.run(
        [*pip_wheel, str(tmp_path / "from-sdist"), str(unpacked)], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr

    site = tmp_path / "site"
    with zipfile.ZipFile(next((tmp_path / "from-sdist").glob("xlsearch_client-*.whl"))) as zf:
        zf.extractall(site)
    probe = (
        "import sys, xlsearch_client\n"
        "from xlsearch_client import _calls\n"
        "assert xlsearch_client.__file__.startswith(sys.argv[1]), xlsearch_client.__file__\n"
        "assert _calls.pb.__file__.startswith(sys.argv[1])\n"
        "assert _calls.search_request('猫', 3, 'cm', None, ['x']).top_k == 3\n"
        "assert not {'numpy', 'torch', 'onnxruntime', 'faiss', 'xlsearch'} & set(sys.modules)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe, str(site)],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
