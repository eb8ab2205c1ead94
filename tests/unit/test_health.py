"""skuvid.health: /metrics, /healthz, /readyz from a thread that answers while the event loop is blocked."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from skuvid.errors import Outcome
from skuvid.health import HealthServer, HealthServerError, LoopHeartbeat, Readiness, StallWatch
from skuvid.metrics import Metrics
from skuvid.settings import Settings


def get(server: HealthServer, path: str, headers: dict | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def get_json(server: HealthServer, path: str) -> tuple[int, dict]:
    status, _, body = get(server, path)
    return status, json.loads(body)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(model="tiny")


@pytest.fixture
def server(metrics: Metrics) -> Iterator[HealthServer]:
    with HealthServer(0, metrics.registry, host="127.0.0.1") as started:
        yield started


class LoopThread:
    """An asyncio loop in a thread of its own, with a LoopHeartbeat running on it."""

    def __init__(self, heartbeat: LoopHeartbeat) -> None:
        self.loop = asyncio.new_event_loop()
        self.heartbeat = heartbeat
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> LoopThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=5)
        return self

    async def _start(self) -> None:
        self.heartbeat.start()

    def block(self, seconds: float) -> None:
        """Make the loop run ``time.sleep(seconds)``: a blocking call on the event loop."""
        self.loop.call_soon_threadsafe(time.sleep, seconds)

    def __exit__(self, *_exc: object) -> None:
        self.loop.call_soon_threadsafe(self.heartbeat.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def wait_for(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_metrics_endpoint_serves_the_registry_in_the_text_format(server: HealthServer, metrics: Metrics):
    metrics.renders.labels("ready").inc()
    status, headers, body = get(server, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    ready = [s for s in families["skuvid_renders"].samples if s.labels == {"outcome": "ready"} and s.name.endswith("_total")]
    assert ready[0].value == 1.0
    status, headers, _ = get(server, "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")


def test_no_checks_means_healthy_and_ready_and_unknown_paths_are_404_json(server: HealthServer):
    assert get_json(server, "/healthz") == (200, {"status": "ok", "checks": {}})
    assert get_json(server, "/readyz/") == (200, {"status": "ok", "checks": {}})
    status, body = get_json(server, "/nope")
    assert status == 404 and body["status"] == "fail" and "/healthz" in body["paths"]


def test_healthz_turns_503_while_the_event_loop_is_blocked_and_recovers(server: HealthServer):
    heartbeat = LoopHeartbeat(max_age_s=0.3, interval_s=0.05)
    server.add_liveness("event_loop", heartbeat)
    assert get_json(server, "/healthz")[1]["checks"]["event_loop"] == {"ok": False, "detail": "heartbeat not started"}
    with LoopThread(heartbeat) as loop:
        wait_for(lambda: get_json(server, "/healthz")[0] == 200)
        loop.block(1.5)
        wait_for(lambda: get_json(server, "/healthz")[0] == 503)
        status, body = get_json(server, "/healthz")
        assert body["status"] == "fail"
        assert body["checks"]["event_loop"]["detail"].startswith("event loop blocked")
        assert get_json(server, "/readyz")[0] == 503  # not alive: not ready either
        wait_for(lambda: get_json(server, "/healthz")[0] == 200)


def test_healthz_turns_503_when_a_render_runs_past_its_limit():
    clock = [100.0]
    watch = StallWatch(limit_s=1800, clock=lambda: clock[0])
    with HealthServer(0, Metrics().registry, host="127.0.0.1") as server:
        server.add_liveness("render", watch)
        watch.started("SKU-1/abc")
        clock[0] += 1799
        status, body = get_json(server, "/healthz")
        assert status == 200 and body["checks"]["render"]["detail"] == "render SKU-1/abc running 1799 s"
        clock[0] += 2
        status, body = get_json(server, "/healthz")
        assert status == 503
        assert body["checks"]["render"] == {"ok": False, "detail": "render SKU-1/abc stalled: running 1801 s (limit 1800 s)"}
        watch.finished()
        assert get_json(server, "/healthz") == (200, {"status": "ok", "checks": {"render": {"ok": True, "detail": "idle"}}})


def test_readyz_is_503_until_every_flag_is_set(server: HealthServer):
    flags = Readiness("model_loaded", "partitions_assigned", "producer_connected")
    flags.register(server)
    status, body = get_json(server, "/readyz")
    assert status == 503 and set(body["checks"]) == set(flags.names)
    assert get_json(server, "/healthz")[0] == 200  # readiness is not liveness
    flags.set("model_loaded")
    flags.set("producer_connected")
    assert get_json(server, "/readyz")[0] == 503
    flags.set("partitions_assigned", detail="12 partitions")
    status, body = get_json(server, "/readyz")
    assert status == 200 and body["checks"]["partitions_assigned"] == {"ok": True, "detail": "12 partitions"}
    flags.clear("partitions_assigned", "rebalancing")
    assert get_json(server, "/readyz")[1]["checks"]["partitions_assigned"] == {"ok": False, "detail": "rebalancing"}
    with pytest.raises(KeyError, match="model_loded"):
        flags.set("model_loded")


def test_a_check_that_raises_fails_with_its_error_and_names_are_unique(server: HealthServer):
    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    server.add_readiness("broken", broken)
    status, body = get_json(server, "/readyz")
    assert status == 503 and body["checks"]["broken"] == {"ok": False, "detail": "check raised RuntimeError('boom')"}
    with pytest.raises(ValueError, match="already registered"):
        server.add_liveness("broken", lambda: (True, ""))


def test_a_port_in_use_is_a_fatal_error_naming_the_port(server: HealthServer):
    with pytest.raises(HealthServerError, match=rf"127\.0\.0\.1:{server.port}") as raised:
        HealthServer(server.port, Metrics().registry, host="127.0.0.1").start()
    assert raised.value.kind is Outcome.FATAL


def test_stop_closes_the_port_and_serve_delegates_to_a_health_server():
    metrics = Metrics()
    assert metrics.serve(0) is None  # Settings.metrics_port 0: no endpoint
    server = HealthServer(0, metrics.registry, host="127.0.0.1").start()
    port = server.port
    server.stop()
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
    served = metrics.serve(port, host="127.0.0.1")
    try:
        assert served is not None and get_json(served, "/healthz")[0] == 200
    finally:
        served.stop()


def test_the_sasl_password_never_reaches_metrics(server: HealthServer, metrics: Metrics):
    secret = "sasl-pa55-never-exported"
    settings = Settings(kafka_sasl_password=secret, model="tiny")
    metrics.build_info.labels("0", settings.model, "unknown").set(1)
    metrics.failures.labels("auth_failed").inc()
    _, _, body = get(server, "/metrics")
    assert secret not in body.decode()
    assert secret not in repr(settings)


def test_heartbeat_and_stall_watch_details_without_a_server():
    clock = [0.0]
    heartbeat = LoopHeartbeat(max_age_s=10, clock=lambda: clock[0])
    heartbeat.last_beat = 0.0
    clock[0] = 10.5
    assert heartbeat() == (False, "event loop blocked: last ran 10.5 s ago (limit 10 s)")
    with pytest.raises(ValueError):
        LoopHeartbeat(max_age_s=0.5, interval_s=0.5)
    watch = StallWatch(limit_s=60, what="model load", clock=lambda: clock[0])
    with watch.job("Wan2.2"):
        clock[0] += 61
        assert watch() == (False, "model load Wan2.2 stalled: running 61 s (limit 60 s)")
    assert watch() == (True, "idle")
