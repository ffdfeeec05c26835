"""deploy/ is valid: every YAML and JSON file parses, every PromQL expression parses and names
only metrics (and labels) the code really exposes, and the Kubernetes and compose files run one
pool per queue, scaled by KEDA on the Redis list dramatiq really uses."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from cli.main import GRACEFUL_SHUTDOWN_SECONDS
from core import metrics
from core.broker import NAMESPACE, QUEUES
from core.callback_events import CANCELED, DEAD, DELIVERED
from core.queue_depth import QueueDepthCollector, ready_list_key
from core.settings import Settings
from workers.pool import SHUTDOWN_TIMEOUT_MS
from workers.providers.base import ProviderError
from workers.retries import error_kind

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
#: Labels Prometheus adds to every series, and the scrape config's own.
TARGET_LABELS = {"job", "instance", "pool"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}


def exposed_metrics() -> dict[str, set[str]]:
    """Every series name the code can expose, with its label names."""
    names: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for suffix in SUFFIXES[value._type]:
                labels = set(value._labelnames) | ({"le"} if suffix == "_bucket" else set())
                names[value._name + suffix] = labels
    for family in QueueDepthCollector(None, NAMESPACE, QUEUES).describe():  # type: ignore[arg-type]
        names[family.name] = {"queue", "state"}
    return names


def selectors(node: Any) -> Iterator[Any]:
    """Every vector selector in a parsed PromQL expression."""
    if isinstance(node, promql_parser.VectorSelector):
        yield node
    elif isinstance(node, promql_parser.MatrixSelector):
        yield node.vector_selector
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from selectors(node.lhs)
        yield from selectors(node.rhs)
    elif isinstance(node, promql_parser.AggregateExpr):
        yield from selectors(node.expr)
        if node.param is not None:
            yield from selectors(node.param)
    elif isinstance(node, promql_parser.Call):
        for argument in node.args:
            yield from selectors(argument)
    elif isinstance(
        node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr
    ):
        yield from selectors(node.expr)


def check_expression(expression: str, where: str) -> set[str]:
    """Parse ``expression``; assert every metric and label it names exists. Returns the
    metric names."""
    known = exposed_metrics()
    tree = promql_parser.parse(expression.replace("$__rate_interval", "5m"))
    used = set()
    for selector in selectors(tree):
        assert selector.name in known, f"{where}: {selector.name} is not a metric of the code"
        for matcher in selector.matchers.matchers:
            assert matcher.name in known[selector.name] | TARGET_LABELS, (
                f"{where}: {selector.name} has no label {matcher.name}"
            )
        used.add(selector.name)
    assert used, f"{where}: names no metric"
    return used


def yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s(kind: str) -> list[dict]:
    return [
        doc
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for doc in yaml_documents(path)
        if doc.get("kind") == kind
    ]


@pytest.mark.parametrize(
    "path", sorted(DEPLOY.rglob("*.y*ml")), ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_every_yaml_file_parses(path):
    assert yaml_documents(path)


@pytest.mark.parametrize(
    "path", sorted(DEPLOY.rglob("*.json")), ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_every_json_file_parses(path):
    assert json.loads(path.read_text())


def test_the_registry_knows_the_metrics_of_the_issue():
    known = exposed_metrics()
    for name in (
        "streams_http_requests_total",
        "streams_http_request_duration_seconds_bucket",
        "streams_messages_accepted_total",
        "streams_messages_rejected_total",
        "streams_messages_total",
        "streams_segments_sent_total",
        "streams_queue_depth",
        "streams_worker_processing_duration_seconds_bucket",
        "streams_provider_call_duration_seconds_bucket",
        "streams_provider_errors_total",
        "streams_rate_limit_delays_total",
        "streams_otp_verifications_total",
        "streams_callbacks_total",
    ):
        assert name in known
    assert all(name.startswith("streams_") for name in known)


def test_alert_rules_parse_and_name_real_metrics():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            alerts[rule["alert"]] = check_expression(rule["expr"], rule["alert"])
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"]
    # What the issue asks for: queue depth growing, OTP p99 latency, error ratio, dead letters.
    assert "streams_queue_depth" in alerts["StreamsQueueBacklogGrowing"]
    assert "streams_delivery_latency_seconds_bucket" in alerts["StreamsOtpLatencyHigh"]
    assert "streams_messages_total" in alerts["StreamsSendErrorRatioHigh"]
    assert "streams_queue_depth" in alerts["StreamsDeadLetters"]


def test_alerts_on_callbacks_match_outcomes_that_are_recorded():
    """The callback dead-letter alert matched ``outcome="dead_lettered"``, a value the
    callbacks never record ("dead"), so it could not fire."""
    recorded = {"retry", DELIVERED, DEAD, CANCELED}  # workers.callbacks: _settle and retries
    text = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    matched = re.findall(r'streams_callbacks_total\{outcome="([^"]+)"\}', text)
    assert matched, "the callback alerts name an outcome"
    assert set(matched) <= recorded, matched


def test_the_set_up_alert_matches_a_kind_the_workers_record():
    """``StreamsProviderRefusesOurSetUp`` matches a ``kind`` that ``workers.retries`` counts
    a refusal of our credentials in, and no other."""
    recorded = error_kind(
        ProviderError("provider_auth_failed", "HTTP 401", transient=False, configuration=True)
    )
    text = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    matched = re.findall(r'streams_provider_errors_total\{kind="([^"]+)"\}', text)
    assert matched == [recorded] == ["configuration"]


def test_the_dashboard_names_real_metrics():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "streams.json").read_text())
    datasource = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    used: set[str] = set()
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"]["uid"] == datasource["uid"]
        for target in panel["targets"]:
            used |= check_expression(target["expr"], panel["title"])
    assert len(used) >= 15


def test_one_worker_deployment_per_queue_scaled_by_keda_on_the_real_list():
    deployments = {d["metadata"]["name"]: d for d in k8s("Deployment")}
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in k8s("ScaledObject")}
    for queue in QUEUES:
        name = "streams-worker-" + queue.replace("_", "-")
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        args = container["args"]
        assert args[:2] == ["streams", "worker"]
        assert args[args.index("--queues") + 1] == queue
        assert args[args.index("--metrics-port") + 1] == "9191"
        trigger = scaled[name]["spec"]["triggers"][0]
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["listName"] == ready_list_key(NAMESPACE, queue)
        assert scaled[name]["spec"]["minReplicaCount"] >= 1
        env = {e["name"] for e in container["env"]}
        assert {
            trigger["metadata"]["addressFromEnv"],
            trigger["metadata"]["passwordFromEnv"],
        } <= env
        grace = deployments[name]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > SHUTDOWN_TIMEOUT_MS / 1000
    assert len(scaled) == len(QUEUES)


def test_the_otp_pool_has_guaranteed_cpu():
    """Invariant 6 on a shared node: requests = limits (Guaranteed QoS) for the OTP pool.
    Its jobs wake it through the queue's doorbell (``core.queue_doorbell``), so it does not
    spin on a short poll."""
    deployments = {d["metadata"]["name"]: d for d in k8s("Deployment")}
    container = deployments["streams-worker-otp"]["spec"]["template"]["spec"]["containers"][0]
    resources = container["resources"]
    assert resources["requests"] == resources["limits"]
    assert set(resources["limits"]) == {"cpu", "memory"}
    assert "--poll-ms" not in container["args"]
    assert "otp" in Settings(_env_file=None).doorbell_queues


def test_web_relay_migration_and_references():
    deployments = {d["metadata"]["name"]: d for d in k8s("Deployment")}
    web = deployments["streams-web"]["spec"]["template"]["spec"]
    assert web["terminationGracePeriodSeconds"] > GRACEFUL_SHUTDOWN_SECONDS
    container = web["containers"][0]
    assert container["args"][:2] == ["streams", "serve"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    service = k8s("Service")[0]
    assert (
        service["spec"]["selector"] == deployments["streams-web"]["spec"]["selector"]["matchLabels"]
    )
    assert deployments["streams-relay"]["spec"]["template"]["spec"]["containers"][0]["args"][
        :2
    ] == [
        "streams",
        "relay",
    ]
    job = k8s("Job")[0]["spec"]["template"]["spec"]["containers"][0]
    assert job["args"] == ["streams", "migrate"]
    config = {c["metadata"]["name"] for c in k8s("ConfigMap")}
    secret_keys = set(k8s("Secret")[0]["stringData"])
    for workload in [*deployments.values(), *k8s("Job")]:
        spec = workload["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        for item in spec["containers"]:
            assert {ref["configMapRef"]["name"] for ref in item["envFrom"]} <= config
            for variable in item["env"]:
                ref = variable["valueFrom"]["secretKeyRef"]
                assert ref["name"] == "streams-secrets" and ref["key"] in secret_keys
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (DEPLOY / "k8s" / resource).exists()
    assert "secret.example.yaml" not in kustomization["resources"]


def test_compose_runs_every_part_and_prometheus_scrapes_them():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "web", "relay", "prometheus", "grafana", *QUEUES} <= set(services)
    for queue in QUEUES:
        command = services[queue]["command"]
        assert command[command.index("--queues") + 1] == queue
        assert command[command.index("--metrics-port") + 1] == "9191"
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    worker_names = jobs["streams-workers"]["dns_sd_configs"][0]["names"]
    assert sorted(worker_names) == sorted(QUEUES)
    assert jobs["streams-web"]["dns_sd_configs"][0]["port"] == 8080
    relay_command = services["relay"]["command"]
    assert jobs["streams-relay"]["dns_sd_configs"][0]["port"] == int(
        relay_command[relay_command.index("--metrics-port") + 1]
    )
    assert prometheus["rule_files"] == ["alerts.yml"]


def test_every_procfile_pool_and_the_relay_serve_metrics_on_ports_of_their_own():
    """API.md: metrics on every worker pool. On one host (the Procfile) each process needs
    a port of its own; the web serves them on its HTTP port."""
    processes = dict(
        line.split(": ", 1)
        for line in (DEPLOY.parent / "Procfile").read_text().splitlines()
        if line.strip()
    )
    assert set(QUEUES) | {"web", "relay", "callbacks"} == set(processes)
    ports = {}
    for name, command in processes.items():
        if name == "web":
            continue
        match = re.search(r"--metrics-port \$\{\w+:-(\d+)\}", command)
        assert match, f"{name} serves no metrics: {command}"
        ports[name] = match.group(1)
    assert len(set(ports.values())) == len(ports), f"two processes share a port: {ports}"
