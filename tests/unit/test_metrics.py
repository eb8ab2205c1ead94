"""skuvid.metrics: series that exist from the start, stages, cost, GPU clock and memory, consumer lag."""

from __future__ import annotations

import asyncio
import sys
import types
from collections import namedtuple

import pytest

from consumers.lag import aiokafka_lag, lag_records, report_lag
from schemas.events import Lane, Reason
from schemas.topics import INPUT_TOPICS, REQUEST_TOPICS
from skuvid.metrics import COST_OUTCOMES, RENDER_OUTCOMES, STAGES, GpuClock, Metrics

TP = namedtuple("TP", "topic partition")  # the shape of aiokafka's and faust's TopicPartition


def value(metrics: Metrics, name: str, **labels) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def lag_series(metrics: Metrics) -> dict[tuple[str, str, str], float]:
    (family,) = [f for f in metrics.registry.collect() if f.name == "skuvid_consumer_lag_records"]
    return {(s.labels["group"], s.labels["topic"], s.labels["partition"]): s.value for s in family.samples}


def test_labelled_series_exist_at_zero_before_any_event():
    m = Metrics()
    for reason in Reason:
        assert value(m, "skuvid_video_failed_total", reason=reason.value) == 0
        assert value(m, "skuvid_dead_letters_total", reason=reason.value) == 0
    for outcome in RENDER_OUTCOMES:
        assert value(m, "skuvid_renders_total", outcome=outcome) == 0
    for outcome in COST_OUTCOMES:
        assert value(m, "skuvid_gpu_seconds_total", outcome=outcome) == 0
        assert value(m, "skuvid_cost_cny_total", outcome=outcome) == 0
    for stage in STAGES:
        assert value(m, "skuvid_stage_seconds_count", stage=stage) == 0
    for lane in Lane:
        assert value(m, "skuvid_video_requests_total", lane=lane.value) == 0
    for topic in (*INPUT_TOPICS, *REQUEST_TOPICS):
        assert value(m, "skuvid_events_consumed_total", topic=topic.name) == 0


def test_build_info_and_process_collectors_are_in_the_per_process_registry():
    m = Metrics(model="tiny", commit="abc1234")
    assert value(m, "skuvid_build_info", version="0.1.0", model="tiny", commit="abc1234") == 1
    assert value(Metrics(), "skuvid_build_info", version="0.1.0", model="unknown", commit="unknown") == 1
    assert value(m, "process_resident_memory_bytes") > 0
    platform = {f.name: f for f in m.registry.collect()}["python_info"]
    assert platform.samples[0].labels["major"] == str(sys.version_info.major)


def test_stage_timing_observes_known_stages_only():
    m = Metrics()
    m.observe_stage("denoise", 12.5)
    with m.time_stage("upload"):
        pass
    with pytest.raises(RuntimeError), m.time_stage("publish"):
        raise RuntimeError("broker down")  # time spent failing is observed too
    assert value(m, "skuvid_stage_seconds_sum", stage="denoise") == 12.5
    assert value(m, "skuvid_stage_seconds_bucket", stage="denoise", le="30.0") == 1
    assert value(m, "skuvid_stage_seconds_bucket", stage="denoise", le="10.0") == 0
    assert value(m, "skuvid_stage_seconds_count", stage="upload") == 1
    assert value(m, "skuvid_stage_seconds_count", stage="publish") == 1
    with pytest.raises(ValueError, match="unknown stage 'render'"):
        m.observe_stage("render", 1.0)


def test_charge_counts_gpu_seconds_and_cost_by_outcome():
    m = Metrics()
    m.charge("ready", 90.0, price_cny_per_hour=8.0)
    m.charge("retried", 45.0, price_cny_per_hour=8.0)
    assert value(m, "skuvid_gpu_seconds_total", outcome="ready") == 90.0
    assert value(m, "skuvid_cost_cny_total", outcome="ready") == pytest.approx(0.2)
    assert value(m, "skuvid_cost_cny_total", outcome="retried") == pytest.approx(0.1)
    with pytest.raises(ValueError, match="outcome"):
        m.charge("reused", 1.0, 8.0)


def test_gpu_clock_counts_busy_time_while_it_runs():
    now = [0.0]
    clock = GpuClock(clock=lambda: now[0])
    assert (clock.busy_seconds(), clock.wall_seconds()) == (0.0, 0.0)
    clock.start()
    now[0] = 10.0
    with clock.busy():
        now[0] = 25.0
        assert clock.busy_seconds() == 15.0  # a job in progress counts as it runs
        with clock.busy():  # nested: counted once
            now[0] = 30.0
    now[0] = 40.0
    assert (clock.busy_seconds(), clock.wall_seconds()) == (20.0, 40.0)
    clock.busy_end()  # unpaired: ignored
    assert clock.busy_seconds() == 20.0


def test_gpu_clock_is_exported_as_counters():
    m = Metrics()
    assert value(m, "skuvid_gpu_busy_seconds_total") == 0.0
    with m.gpu_clock.busy():
        pass
    assert value(m, "skuvid_wall_seconds_total") >= value(m, "skuvid_gpu_busy_seconds_total") >= 0.0


def test_gpu_memory_update_does_nothing_without_cuda(monkeypatch: pytest.MonkeyPatch):
    m = Metrics()
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    m.update_gpu_memory()
    assert "torch" not in sys.modules, "must not import torch"
    assert value(m, "skuvid_gpu_memory_allocated_bytes") == 0

    stats = {"allocated": 3e9, "peak": 7e9, "resets": 0}
    cuda = types.SimpleNamespace(
        is_initialized=lambda: True, memory_allocated=lambda device: stats["allocated"],
        max_memory_allocated=lambda device: stats["peak"], reset_peak_memory_stats=lambda device: stats.update(resets=1),
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    m.update_gpu_memory(reset_peak=True)
    assert value(m, "skuvid_gpu_memory_allocated_bytes") == 3e9
    assert value(m, "skuvid_gpu_memory_peak_bytes") == 7e9
    assert stats["resets"] == 1
    cuda.is_initialized = lambda: False  # torch imported, CUDA never used (the planner): nothing changes
    stats["allocated"] = 1.0
    m.update_gpu_memory()
    assert value(m, "skuvid_gpu_memory_allocated_bytes") == 3e9


def test_set_lag_replaces_the_group_series_and_removes_revoked_partitions():
    m = Metrics()
    m.set_lag("skuvid-renderer", {("video.requested", 0): 5, ("video.requested", 1): 0, TP("video.requested.hot", 3): 2})
    m.set_lag("skuvid-planner", {("product.created", 0): 100})
    assert lag_series(m) == {
        ("skuvid-renderer", "video.requested", "0"): 5, ("skuvid-renderer", "video.requested", "1"): 0,
        ("skuvid-renderer", "video.requested.hot", "3"): 2, ("skuvid-planner", "product.created", "0"): 100,
    }
    m.set_lag("skuvid-renderer", {("video.requested", 1): 7, ("video.requested", 4): -3})  # 0 and hot 3 revoked
    assert lag_series(m) == {
        ("skuvid-renderer", "video.requested", "1"): 7, ("skuvid-renderer", "video.requested", "4"): 0,
        ("skuvid-planner", "product.created", "0"): 100,
    }
    m.set_lag("skuvid-renderer", {})
    assert lag_series(m) == {("skuvid-planner", "product.created", "0"): 100}


def test_lag_records_from_end_and_committed_offsets():
    end = {TP("t", 0): 10, TP("t", 1): None, TP("t", 2): 3}
    assert lag_records(end, {TP("t", 0): 4, TP("t", 2): 5}) == {("t", 0): 6, ("t", 2): 0}
    assert lag_records({TP("t", 0): 10}, {}) == {("t", 0): 10}


class ConsumerDouble:
    """The parts of AIOKafkaConsumer that aiokafka_lag uses."""

    def __init__(self) -> None:
        self.tps = {TP("video.requested", 0), TP("video.requested.hot", 1)}

    def assignment(self):
        return set(self.tps)

    async def end_offsets(self, tps):
        return {tp: 50 for tp in tps}

    async def committed(self, tp):
        return 45 if tp.topic == "video.requested" else None

    async def position(self, tp):
        return 48


async def test_aiokafka_lag_uses_committed_offsets_then_the_position():
    consumer = ConsumerDouble()
    assert await aiokafka_lag(consumer) == {("video.requested", 0): 5, ("video.requested.hot", 1): 2}
    consumer.tps = set()
    assert await aiokafka_lag(consumer) == {}


async def test_report_lag_keeps_going_after_a_failed_measure():
    m = Metrics()
    calls = []

    async def measure():
        calls.append(len(calls))
        if len(calls) == 1:
            raise ConnectionError("broker away")
        return {("video.requested", 0): len(calls)}

    task = asyncio.create_task(report_lag(m, "skuvid-renderer", measure, interval_s=0.01))
    while len(calls) < 3:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lag_series(m)[("skuvid-renderer", "video.requested", "0")] >= 2
