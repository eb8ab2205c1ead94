"""Every metric, label and label value the dashboard, the alert rules and the KEDA Prometheus scaler query
exists in a fresh ``Metrics()`` registry, under the sample name Prometheus stores it as.

A counter family ``x`` is queried as ``x_total``; a histogram ``x`` as ``x_bucket``/``x_sum``/``x_count`` (a
bare ``x`` matches no series at all, which a dashboard shows as "no data", not as an error).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from skuvid.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "rules_test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "skuvid.json"
KEDA_FILES = sorted((ROOT / "deploy").glob("**/*keda*.yaml")) + sorted((ROOT / "deploy" / "keda").glob("*.yaml"))

METRIC = re.compile(r"\b(skuvid_[a-z0-9_]+)")
SELECTOR = re.compile(r"\b(skuvid_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
RECORDED = re.compile(r"\bskuvid:[a-z0-9_:]+")
# Labels Prometheus adds when it scrapes (target labels, deploy/k8s/servicemonitor.yaml's `component`).
SCRAPE_LABELS = {"component", "pod", "instance", "job", "namespace", "service", "container", "endpoint"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count", "")}


def queried_expressions() -> dict[str, list[str]]:
    rules = yaml.safe_load(RULES.read_text())
    dashboard = json.loads(DASHBOARD.read_text())
    keda = [
        trigger["metadata"]["query"]
        for path in KEDA_FILES
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == "ScaledObject"
        for trigger in doc["spec"]["triggers"]
        if trigger["type"] == "prometheus"
    ]
    return {
        "rules.yaml": [rule["expr"] for group in rules["groups"] for rule in group["rules"]],
        "skuvid.json": [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]],
        "KEDA": keda,
    }


def registry_contract() -> tuple[dict[str, str], dict[str, set[str]], dict[str, dict[str, set[str]]]]:
    """(sample name -> family, family -> label names, family -> label -> values present at start-up)."""
    samples: dict[str, str] = {}
    labels: dict[str, set[str]] = {}
    values: dict[str, dict[str, set[str]]] = {}
    for family in Metrics().registry.collect():
        for suffix in SUFFIXES.get(family.type, ("",)):
            samples[family.name + suffix] = family.name
        names = labels.setdefault(family.name, set())
        for sample in family.samples:
            for label, value in sample.labels.items():
                names.add(label)
                values.setdefault(family.name, {}).setdefault(label, set()).add(value)
        if family.type == "histogram":
            names.add("le")
    return samples, labels, values


def family_labels_declared() -> dict[str, set[str]]:
    """Label names of every labelled metric, even one with no child yet (the lag gauge)."""
    metrics = Metrics()
    declared = {}
    for collector in vars(metrics).values():
        name = getattr(collector, "_name", None)
        if name is not None:
            declared[name] = set(getattr(collector, "_labelnames", ()))
    return declared


@pytest.fixture(scope="module")
def contract():
    samples, labels, values = registry_contract()
    for family, names in family_labels_declared().items():
        labels.setdefault(family, set()).update(names)
    return samples, labels, values


def test_every_source_queries_some_skuvid_metric():
    for source, exprs in queried_expressions().items():
        assert exprs and any(METRIC.search(e) for e in exprs), f"{source} queries no skuvid metric"


@pytest.mark.parametrize("source", ["rules.yaml", "skuvid.json", "KEDA"])
def test_every_queried_metric_name_is_a_sample_skuvid_exports(source, contract):
    samples, _, _ = contract
    used = {name for expr in queried_expressions()[source] for name in METRIC.findall(expr)}
    missing = {}
    for name in sorted(used - set(samples)):
        family = next((f for f in {*samples.values()} if name == f), None)
        missing[name] = (f"{family} is a counter or histogram: query it with its suffix" if family
                         else "not exported by skuvid.metrics.Metrics")
    assert not missing, f"{source}: {missing}"


@pytest.mark.parametrize("source", ["rules.yaml", "skuvid.json", "KEDA"])
def test_label_matchers_name_real_labels_and_values(source, contract):
    samples, labels, values = contract
    problems = []
    for expr in queried_expressions()[source]:
        for metric, matchers in SELECTOR.findall(expr):
            family = samples.get(metric)
            if family is None:
                continue  # reported by the name test
            for label, op, value in MATCHER.findall(matchers):
                if label in SCRAPE_LABELS:
                    continue
                if label not in labels[family]:
                    problems.append(f"{metric} has no label {label!r} (has {sorted(labels[family])})")
                known = values.get(family, {}).get(label)
                if known and op in ("=", "!=") and value not in known:
                    problems.append(f"{metric}{{{label}{op}{value!r}}}: {label} takes {sorted(known)}")
    assert not problems, f"{source}: {problems}"


@pytest.mark.parametrize("source", ["rules.yaml", "skuvid.json", "KEDA"])
def test_grouping_labels_exist_on_a_metric_of_the_expression(source, contract):
    samples, labels, _ = contract
    recorded_labels = {"reason", "outcome", "component", "pod", "group", "topic", "stage"}
    problems = []
    for expr in queried_expressions()[source]:
        families = {samples[m] for m in METRIC.findall(expr) if m in samples}
        available = set().union(*(labels[f] for f in families)) | SCRAPE_LABELS
        if RECORDED.search(expr):
            available |= recorded_labels
        for group in GROUPING.findall(expr):
            for label in filter(None, (part.strip() for part in group.split(","))):
                if label not in available:
                    problems.append(f"{label!r} in {expr.strip()[:80]!r}")
    assert not problems, f"{source}: {problems}"


def test_alerts_and_dashboard_read_only_recorded_series():
    rules = yaml.safe_load(RULES.read_text())
    recorded = {rule["record"] for group in rules["groups"] for rule in group["rules"] if "record" in rule}
    for source, exprs in queried_expressions().items():
        used = {name for expr in exprs for name in RECORDED.findall(expr)}
        assert used <= recorded, f"{source} reads series no rule records: {sorted(used - recorded)}"


def test_the_lag_series_has_the_labels_keda_and_the_alerts_group_by(contract):
    _, labels, _ = contract
    assert labels["skuvid_consumer_lag_records"] == {"group", "topic", "partition"}


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus)")
def test_promtool_accepts_the_rules_and_their_unit_tests():
    check = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([PROMTOOL, "test", "rules", RULES_TEST.name], cwd=RULES_TEST.parent,
                          capture_output=True, text=True, timeout=120)
    assert unit.returncode == 0, unit.stdout + unit.stderr
