"""The deployment files agree with the code: settings names, metric names, CLI arguments, topic partitions.

Every check reads the real files under deploy/ and the real modules, so renaming a setting, a metric or a
topic without updating the manifests fails here.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from schemas.topics import REQUEST_TOPICS
from skuvid.cli import build_parser
from skuvid.metrics import Metrics
from skuvid.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
RULES = DEPLOY / "prometheus" / "rules.yaml"
DASHBOARD = DEPLOY / "grafana" / "skuvid.json"
# Files of this test's scope that may name settings (deploy/kafka and deploy/local belong to the brokers).
OWN_FILES = [DEPLOY / "Dockerfile", DEPLOY / "README.md", DASHBOARD, *K8S.glob("*.yaml"), *DEPLOY.glob("prometheus/*.yaml")]
SKUVID_ENV = re.compile(r"\bSKUVID_[A-Z0-9_]+")
SKUVID_METRIC = re.compile(r"\bskuvid_[a-z0-9_]+")
RECORDED = re.compile(r"\bskuvid:[a-z0-9_:]+")


def _docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _k8s() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in _docs(path)]


def _one(kind: str, name: str) -> dict:
    found = [d for d in _k8s() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in deploy/k8s, found {len(found)}"
    return found[0]


def _configmap() -> dict[str, str]:
    return _one("ConfigMap", "skuvid-settings")["data"]


def _container(deployment: str) -> dict:
    (container,) = _one("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return container


def _env_name(field: str) -> str:
    return f"SKUVID_{field.upper()}"


def exported_sample_names(metrics: Metrics) -> set[str]:
    """Every sample name the registry can expose, including labelled metrics that have no child yet.

    A fresh registry yields no samples for a labelled counter, so names are derived from each family's type
    with the suffixes prometheus-client adds.
    """
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def _rule_exprs() -> list[str]:
    return [rule["expr"] for group in _docs(RULES)[0]["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_manifest_parses_and_lives_in_the_skuvid_namespace():
    docs = _k8s()
    assert {d["kind"] for d in docs} >= {
        "Namespace", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "ScaledObject", "ServiceMonitor",
    }
    for doc in docs:
        if doc["kind"] in {"Namespace", "Kustomization"}:
            continue
        assert doc["metadata"].get("namespace") == "skuvid", f"{doc['kind']}/{doc['metadata']['name']}"


def test_kustomization_applies_every_manifest_but_the_model_fetch_job():
    (kustomization,) = _docs(K8S / "kustomization.yaml")
    expected = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "model-fetch.yaml"}
    assert set(kustomization["resources"]) == expected


def test_configmap_names_real_settings_and_its_values_parse(monkeypatch: pytest.MonkeyPatch):
    fields = {_env_name(f) for f in Settings.model_fields}
    data = _configmap()
    assert set(data) <= fields, f"not Settings fields: {sorted(set(data) - fields)}"
    for name in fields:
        monkeypatch.delenv(name, raising=False)
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    settings = Settings()  # raises on a value Settings refuses
    assert settings.store == "s3" and settings.device == "cuda"
    assert settings.metrics_port > 0, "probes and the ServiceMonitor need the metrics endpoint"


def test_every_skuvid_env_name_in_deploy_files_is_a_setting():
    fields = {_env_name(f) for f in Settings.model_fields}
    for path in OWN_FILES:
        unknown = set(SKUVID_ENV.findall(path.read_text())) - fields
        assert not unknown, f"{path.relative_to(ROOT)} names unknown settings {sorted(unknown)}"


def test_rules_and_dashboard_use_only_exported_metrics():
    exported = exported_sample_names(Metrics())
    for source, exprs in (("rules.yaml", _rule_exprs()), ("skuvid.json", _dashboard_exprs())):
        used = {name for expr in exprs for name in SKUVID_METRIC.findall(expr)}
        assert used, f"{source} references no skuvid metric"
        assert used <= exported, f"{source} uses metrics skuvid does not export: {sorted(used - exported)}"


def test_dashboard_recorded_series_are_recorded_by_the_rules():
    recorded = {rule["record"] for group in _docs(RULES)[0]["groups"] for rule in group["rules"] if "record" in rule}
    used = {name for expr in _dashboard_exprs() for name in RECORDED.findall(expr)}
    assert used <= recorded, f"dashboard reads series no rule records: {sorted(used - recorded)}"


def test_alerts_have_severity_and_summary():
    alerts = [r for group in _docs(RULES)[0]["groups"] for r in group["rules"] if "alert" in r]
    assert len(alerts) >= 5
    for alert in alerts:
        assert alert["labels"]["severity"] in {"info", "warning", "critical"}, alert["alert"]
        assert alert["annotations"]["summary"], alert["alert"]


@pytest.mark.parametrize("deployment, role", [("skuvid-planner", "planner"), ("skuvid-renderer", "renderer")])
def test_deployments_run_a_real_cli_command_and_expose_the_metrics_port(deployment: str, role: str):
    container = _container(deployment)
    args = build_parser().parse_args(container["args"])
    assert (args.command, args.role) == ("serve", role)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == int(_configmap()["SKUVID_METRICS_PORT"])
    assert {"configMapRef": {"name": "skuvid-settings"}} in container["envFrom"]
    pod_labels = _one("Deployment", deployment)["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["app.kubernetes.io/component"] == role


def test_planner_runs_two_replicas_in_one_stable_group():
    assert _one("Deployment", "skuvid-planner")["spec"]["replicas"] == 2
    assert _configmap()["SKUVID_PLANNER_GROUP"], "the planner group must be set explicitly, not per pod"


def test_renderer_gets_one_gpu_drains_a_render_and_mounts_the_model_read_only():
    pod = _one("Deployment", "skuvid-renderer")["spec"]["template"]["spec"]
    container = _container("skuvid-renderer")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["terminationGracePeriodSeconds"] >= 600
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "model load takes minutes"
    assert container["readinessProbe"]["httpGet"]["port"] == "metrics"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["models"]["readOnly"] is True
    assert volumes["models"]["persistentVolumeClaim"]["readOnly"] is True
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HUB_CACHE"].startswith(mounts["models"]["mountPath"])


def test_keda_scales_the_renderer_on_both_request_lanes_within_their_partitions():
    scaled = _one("ScaledObject", "skuvid-renderer")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == "skuvid-renderer"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= min(t.partitions for t in REQUEST_TOPICS)
    assert sorted(t["metadata"]["topic"] for t in spec["triggers"]) == sorted(t.name for t in REQUEST_TOPICS)
    for trigger in spec["triggers"]:
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert int(meta["lagThreshold"]) >= 1
        assert meta["consumerGroupFromEnv"] == _env_name("renderer_group")
        assert {meta["bootstrapServersFromEnv"], meta["consumerGroupFromEnv"]} <= set(_configmap())


def test_metrics_service_pdbs_and_servicemonitor_select_the_pods():
    pods = {d: _one("Deployment", d)["spec"]["template"]["metadata"]["labels"] for d in ("skuvid-planner", "skuvid-renderer")}
    service = _one("Service", "skuvid-metrics")
    selects = lambda selector, labels: selector.items() <= labels.items()  # noqa: E731
    assert all(selects(service["spec"]["selector"], labels) for labels in pods.values())
    for name in pods:
        assert selects(_one("PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"], pods[name])
    monitor = _one("ServiceMonitor", "skuvid")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}


def test_dockerfile_installs_the_lock_the_font_and_every_package():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"uv pip sync .*requirements\.lock", dockerfile)
    assert "fonts-wqy-microhei" in dockerfile
    assert 'ENTRYPOINT ["skuvid"]' in dockerfile
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "skuvid" in pyproject["project"]["scripts"]
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    for package in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        name = package.rstrip("*")
        assert re.search(rf"^COPY {name} ", dockerfile, re.M), f"Dockerfile does not copy package {name}"


def test_grafana_dashboard_loads_with_a_prometheus_target_per_panel():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
