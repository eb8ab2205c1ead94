"""What an SRE sees, on real Kafka with real processes: probes, metrics, JSON logs, no secrets anywhere."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemas.codec import encode_value
from schemas.topics import PRODUCT_CREATED
from skuvid.brokers import free_port
from skuvid.health import HealthServer
from skuvid.settings import as_env
from tests.integration.harness import DATA, REPO_ROOT, Service, produce_raw, run, service_settings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SASL_PASSWORD = "pw-" + uuid.uuid4().hex  # never used by the PLAINTEXT broker; must never be shown
S3_SECRET = "s3-" + uuid.uuid4().hex


def fetch(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def samples(port: int) -> dict[tuple[str, tuple], float]:
    status, body = fetch(port, "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def value(metrics: dict, name: str, **labels) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_until(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def ops(kafka_broker, tmp_path_factory):
    work = tmp_path_factory.mktemp("ops")
    ports = {"planner": free_port(), "renderer": free_port()}
    base = service_settings(kafka_broker.bootstrap, work, kafka_sasl_password=SASL_PASSWORD,
                            s3_secret_access_key=S3_SECRET, log_format="json")
    services = {role: Service(role, base.model_copy(update={"metrics_port": port}), work)
                for role, port in ports.items()}
    yield base, ports, services
    for service in services.values():
        service.stop()


def test_renderer_is_ready_only_after_model_load_and_assignment(ops):
    _, ports, services = ops
    status, body = wait_until(lambda: (r := fetch(ports["renderer"], "/readyz"))[0] and r, 60, "renderer port")
    if status == 503:  # caught before the model was loaded or the partitions assigned: it says which check
        failing = {name for name, check in json.loads(body)["checks"].items() if not check["ok"]}
        assert failing & {"model_loaded", "partitions_assigned", "producer_connected"}
    wait_until(lambda: fetch(ports["renderer"], "/readyz")[0] == 200, 120, "renderer ready")
    wait_until(lambda: fetch(ports["planner"], "/readyz")[0] == 200, 120, "planner ready")
    assert fetch(ports["renderer"], "/healthz")[0] == 200 and fetch(ports["planner"], "/healthz")[0] == 200
    assert services["renderer"].alive() and services["planner"].alive()


def test_a_run_moves_counters_stage_histograms_and_lag(ops):
    settings, ports, services = ops
    wait_until(lambda: fetch(ports["renderer"], "/readyz")[0] == 200, 120, "renderer ready")
    before = samples(ports["renderer"])
    skus = [f"SKU-OPS-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    base = orjson.loads(DATA.joinpath("catalog.jsonl").read_bytes().splitlines()[1])
    products = [orjson.dumps(base | {"sku": s, "event_id": f"evt-{s}"}) for s in skus]
    run(produce_raw(settings.kafka_bootstrap, PRODUCT_CREATED.name, products, [s.encode() for s in skus]))

    def rendered():
        now = samples(ports["renderer"])
        done = value(now, "skuvid_renders_total", outcome="ready") - value(before, "skuvid_renders_total", outcome="ready")
        return now if done >= 2 else None

    after = wait_until(rendered, 180, "two renders")
    assert value(after, "skuvid_stage_seconds_count", stage="text_encode") >= 1  # once per text: it is cached
    for stage in ("denoise", "vae_decode", "quality_gate", "encode", "upload", "publish"):
        grown = (value(after, "skuvid_stage_seconds_count", stage=stage)
                 - value(before, "skuvid_stage_seconds_count", stage=stage))
        assert grown >= 2, stage
    assert value(after, "skuvid_gpu_seconds_total", outcome="ready") > value(before, "skuvid_gpu_seconds_total", outcome="ready")
    assert value(after, "skuvid_video_failed_total", reason="unsafe_content") == 0  # pre-initialised series
    assert any(name == "skuvid_build_info" for name, _ in after)
    assert any(name == "process_resident_memory_bytes" for name, _ in after)

    def lag_reported():
        now = samples(ports["renderer"])
        lags = {labels: v for (name, labels), v in now.items() if name == "skuvid_consumer_lag_records"}
        return lags if lags and all(v == 0 for v in lags.values()) else None

    lags = wait_until(lag_reported, 60, "renderer lag reported and drained")
    assert {dict(labels)["group"] for labels in lags} == {settings.renderer_group}


def test_logs_are_json_lines_with_record_fields_and_no_secret(ops):
    settings, ports, services = ops
    wait_until(lambda: "published SKU-OPS" in services["renderer"].log(), 180, "a published render")
    for role, service in services.items():
        text = service.log()
        assert SASL_PASSWORD not in text and S3_SECRET not in text, role
        assert "\x1b[" not in text, f"ANSI codes in the {role} log"
        lines = [line for line in text.splitlines() if line.strip()]
        parsed = [json.loads(line) for line in lines]  # every line is one JSON object
        assert all({"timestamp", "level", "logger", "message"} <= p.keys() for p in parsed), role
    published = [json.loads(line) for line in services["renderer"].log().splitlines()
                 if "published SKU-OPS" in line]
    assert {"event_id", "sku", "request_key", "topic", "partition", "offset"} <= published[0].keys()
    for port in ports.values():
        body = fetch(port, "/metrics")[1].decode()
        assert SASL_PASSWORD not in body and S3_SECRET not in body


def test_serve_all_runs_both_roles_on_two_ports(kafka_broker, tmp_path):
    port = free_port()
    settings = service_settings(kafka_broker.bootstrap, tmp_path, metrics_port=port)
    env = {**os.environ, **as_env(settings)}
    proc = subprocess.Popen([sys.executable, "-m", "skuvid.cli", "serve"], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: fetch(port, "/healthz")[0] == 200, 90, "planner on the base port")
        wait_until(lambda: fetch(port + 1, "/healthz")[0] == 200, 120, "renderer on the next port")
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=90)
    text = output.decode(errors="replace")
    assert f"port {port}" in text and f"port {port + 1}" in text  # it says so at start
    assert "Address already in use" not in text
