"""deploy/compose.yaml's "replicated" profile (Milvus standalone, two server replicas, Envoy, Redis, Prometheus,
Grafana) without a Docker engine: a Compose implementation renders it (`docker compose config` when the v2 plugin
is installed, else Debian's `docker-compose` 1.29, which predates only the top-level `name` key), and every
reference across the files is checked: Envoy's clusters and Prometheus' targets name replica services and the
ports they listen on, the replicas' environment is valid server settings pointing at the milvus and redis services,
the documented `up` command starts the replicated shape and not the embedded server."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from xlsearch_server.settings import ServerSettings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROFILE = "replicated"
REPLICAS = ("replica-1", "replica-2")
UP = (
    "lb",
    "prometheus-replicas",
    "grafana-replicas",
)  # `--profile replicated up -d lb prometheus-... grafana-...`
SECRETS = ("api_keys", "server.pem", "server.key", "ca.pem")


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))


def envoy() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "envoy" / "envoy.yaml").read_text(encoding="utf-8"))


def published(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port (loopback) of a service."""
    out = {}
    for p in service.get("ports", []):
        host, port, target = str(p).split(":")
        assert host == "127.0.0.1", p
        out[int(target)] = int(port)
    return out


def compose_command() -> tuple[list[str], bool] | None:
    """(argv prefix, understands top-level `name`) of an installed Compose, or None."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"], True
    v1 = shutil.which("docker-compose")
    if v1:
        return [v1], False
    return None


def test_compose_renders_the_replicated_profile(tmp_path: Path) -> None:
    found = compose_command()
    if found is None:
        pytest.skip(
            "neither `docker compose` nor `docker-compose` is installed (scripts/setup.sh installs the latter)"
        )
    argv, knows_name = found
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name in SECRETS:
        (secrets / name).write_text("placeholder\n", encoding="utf-8")
    text = (DEPLOY / "compose.yaml").read_text(encoding="utf-8")
    if not knows_name:  # Compose 1.29 validates the 2021 Compose Specification, before `name:` was added
        assert text.count("\nname: xlsearch\n") == 1
        text = text.replace("\nname: xlsearch\n", "\n")
    file = (
        DEPLOY / f".compose-check-{tmp_path.name}.yaml"
    )  # beside the original: relative paths resolve the same
    file.write_text(text, encoding="utf-8")
    try:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XLSEARCH_SECRETS_DIR": str(secrets)}
        run = subprocess.run(
            [*argv, "-f", str(file), "--profile", PROFILE, "config"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        file.unlink()
    assert run.returncode == 0, run.stderr
    rendered = yaml.safe_load(run.stdout)
    services = rendered["services"]
    assert {
        "milvus",
        *REPLICAS,
        "lb",
        "redis",
        "prometheus-replicas",
        "grafana-replicas",
        "indexer-milvus",
    } <= set(services)
    for name in REPLICAS:  # the YAML merge gave replica-2 everything replica-1 has
        assert services[name]["environment"] == services["replica-1"]["environment"]
        assert services[name]["depends_on"]["milvus"]["condition"] == "service_healthy"
    assert rendered["secrets"]["xlsearch_tls_cert"]["file"] == str(secrets / "server.pem")


def test_replicated_services_start_without_the_embedded_server() -> None:
    services = compose()["services"]
    mine = {n for n, s in services.items() if PROFILE in s.get("profiles", [])}
    assert {"milvus", *REPLICAS, "lb", "prometheus-replicas", "grafana-replicas", "indexer-milvus"} <= mine

    def closure(names: tuple[str, ...]) -> set[str]:
        seen: set[str] = set()
        todo = list(names)
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            deps = services[n].get("depends_on", [])
            todo.extend(deps if isinstance(deps, list) else deps.keys())
        return seen

    started = closure(UP)
    assert started == {*UP, *REPLICAS, "milvus", "redis"}  # not the embedded server, prometheus, grafana
    assert "server" not in started and "prometheus" not in started
    hosts = [published(services[n]).values() for n in started]
    flat = [p for ps in hosts for p in ps]
    assert len(flat) == len(set(flat)), "two services of the replicated shape publish one host port"
    assert set(published(services["lb"])) >= {50051, 8080, 9901}
    assert published(services["lb"])[50051] == published(services["server"])[50051]  # the same front door


def test_replicas_are_valid_milvus_settings_on_the_compose_services(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    for name in REPLICAS:
        env = services[name]["environment"]
        for key in list(ServerSettings.model_fields):
            monkeypatch.delenv(f"XLSEARCH_{key.upper()}", raising=False)
        for key, value in env.items():
            assert key.startswith("XLSEARCH_")
            assert key[len("XLSEARCH_") :].lower() in ServerSettings.model_fields, (
                f"{name}: unknown setting {key}"
            )
            monkeypatch.setenv(key, str(value))
        settings = ServerSettings()
        assert settings.index_backend == "milvus" and settings.index is None
        milvus_host, milvus_port = settings.milvus_uri.removeprefix("http://").split(":")  # type: ignore[union-attr]
        assert milvus_host == "milvus" and milvus_port == "19530" and "milvus" in services
        assert str(settings.redis_url).startswith("redis://redis:6379") and "redis" in services
        assert not services[name].get("ports")  # reached only through the load balancer
        # the image the replica runs has the Milvus client (the Dockerfile's EXTRA_PIP_PACKAGES build argument)
        assert "pymilvus" in services[name]["build"]["args"]["EXTRA_PIP_PACKAGES"]
        assert "ARG EXTRA_PIP_PACKAGES" in (REPO / services[name]["build"]["dockerfile"]).read_text(
            encoding="utf-8"
        )
        assert services[name]["image"] != services["server"]["image"]
        for secret in ("api_keys", "tls_cert", "tls_key"):
            assert f"xlsearch_{secret}" in services[name]["secrets"]
    milvus = services["milvus"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in milvus["volumes"] if v.startswith("./")}
    assert mounts["./milvus/embedEtcd.yaml"] == milvus["environment"]["ETCD_CONFIG_PATH"]
    assert milvus["environment"]["ETCD_USE_EMBED"] == "true"
    indexer = services["indexer-milvus"]["command"]
    assert indexer[indexer.index("--milvus-uri") + 1] == env["XLSEARCH_MILVUS_URI"]
    assert indexer[indexer.index("--milvus-collection") + 1] == env["XLSEARCH_MILVUS_COLLECTION"]


def test_envoy_clusters_point_at_the_replicas() -> None:
    services = compose()["services"]
    lb = services["lb"]
    config = envoy()
    mounted = {v.split(":")[1]: v.split(":")[0] for v in lb["volumes"]}
    assert (DEPLOY / mounted["/etc/envoy/envoy.yaml"]).resolve() == DEPLOY / "envoy" / "envoy.yaml"
    assert lb["command"][lb["command"].index("-c") + 1] == "/etc/envoy/envoy.yaml"
    env = services["replica-1"]["environment"]
    want = {"replicas_grpc": int(env["XLSEARCH_PORT"]), "replicas_http": int(env["XLSEARCH_HTTP_PORT"])}
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert set(clusters) == set(want)
    for name, port in want.items():
        endpoints = [
            e["endpoint"]["address"]["socket_address"]
            for group in clusters[name]["load_assignment"]["endpoints"]
            for e in group["lb_endpoints"]
        ]
        assert sorted((a["address"], a["port_value"]) for a in endpoints) == [(r, port) for r in REPLICAS]
        assert clusters[name]["health_checks"], name  # a replica still loading gets no calls
    routed = set()
    for listener in config["static_resources"]["listeners"]:
        port = listener["address"]["socket_address"]["port_value"]
        assert port in published(lb), f"listener on {port} is not published"
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                for host in f["typed_config"]["route_config"]["virtual_hosts"]:
                    routed |= {r["route"]["cluster"] for r in host["routes"]}
    assert routed == set(want)
    assert config["admin"]["address"]["socket_address"]["port_value"] in published(lb)
    # every file Envoy reads is one of the lb service's secrets
    text = (DEPLOY / "envoy" / "envoy.yaml").read_text(encoding="utf-8")
    import re

    files = set(re.findall(r"filename: /run/secrets/(\w+)", text))
    assert files and files <= set(lb["secrets"])
    assert files <= set(compose()["secrets"])


def test_prometheus_replicated_scrapes_every_replica_and_envoy(tmp_path: Path) -> None:
    services = compose()["services"]
    prom = services["prometheus-replicas"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"] if v.startswith("./")}
    assert mounts["/etc/prometheus/prometheus.yml"] == "./prometheus.replicated.yml"
    config = yaml.safe_load((DEPLOY / "prometheus.replicated.yml").read_text(encoding="utf-8"))
    jobs = {
        j["job_name"]: [t for sc in j["static_configs"] for t in sc["targets"]]
        for j in config["scrape_configs"]
    }
    port = services["replica-1"]["environment"]["XLSEARCH_METRICS_PORT"]
    assert sorted(jobs["xlsearch"]) == [f"{r}:{port}" for r in REPLICAS]
    assert jobs["envoy"] == [f"lb:{envoy()['admin']['address']['socket_address']['port_value']}"]
    assert "prometheus" in prom["networks"]["default"]["aliases"]  # the Grafana datasource's host
    assert services["grafana-replicas"]["volumes"][:2] == services["grafana"]["volumes"][:2]
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    shutil.copy(DEPLOY / "prometheus.replicated.yml", tmp_path / "prometheus.yml")
    shutil.copy(DEPLOY / "alerts.yml", tmp_path / "alerts.yml")
    run = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
