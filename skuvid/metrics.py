"""Every Prometheus metric skuvid exports, in one registry (tests make their own with ``Metrics()``).

Labelled series are created at 0 up front for every value a label can take (reasons, outcomes, stages,
lanes, topics), so a rate over them exists before the first event and an alert on "failures > 0" does not
wait for the first failure to have a series. Consumer lag is the exception: its partitions are known only
once assigned (``set_lag``).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily

from schemas.events import Lane, Reason
from schemas.topics import INPUT_TOPICS, REQUEST_TOPICS

if TYPE_CHECKING:
    from skuvid.health import HealthServer

# Video work spans a second (tiny model) to half an hour (720p, 50 steps on a small card).
RENDER_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800)
# One stage: from an image fetch or a text encode (sub-second) to a whole denoise loop (minutes).
STAGE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800)

# The stages of one render request, in order (`skuvid_stage_seconds{stage}`).
STAGES = ("image_fetch", "text_encode", "denoise", "vae_decode", "quality_gate", "encode", "upload", "publish")
RENDER_OUTCOMES = ("ready", "failed", "reused", "retried")  # skuvid_renders_total{outcome}; retried: not final
COST_OUTCOMES = ("ready", "failed", "retried")  # what the GPU time of an attempt bought
CONSUMED_TOPICS = tuple(t.name for t in (*INPUT_TOPICS, *REQUEST_TOPICS))


class Metrics:
    """The metrics of one process. ``model`` and ``commit`` label ``skuvid_build_info`` (``commit`` comes
    from the build, e.g. an image label; nothing here runs git)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, model: str = "unknown",
                 commit: str = "unknown") -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_consumed = Counter(
            "skuvid_events_consumed_total", "Input records consumed, by topic.", ["topic"], registry=r
        )
        self.dead_letters = Counter(
            "skuvid_dead_letters_total", "Records sent to the dead-letter topic, by reason.", ["reason"], registry=r
        )
        self.requests_planned = Counter(
            "skuvid_video_requests_total", "video.requested published, by lane.", ["lane"], registry=r
        )
        self.requests_deduplicated = Counter(
            "skuvid_video_requests_deduplicated_total", "Planned requests skipped: same request key.", registry=r
        )
        self.renders = Counter(
            "skuvid_renders_total", "Render jobs finished, by outcome (ready, failed, reused; retried: tried again later).", ["outcome"], registry=r
        )
        self.failures = Counter(
            "skuvid_video_failed_total", "video.failed published, by reason.", ["reason"], registry=r
        )
        self.render_seconds = Histogram(
            "skuvid_render_seconds", "Wall time of one render job, all attempts.", buckets=RENDER_BUCKETS, registry=r
        )
        self.quality_attempts = Histogram(
            "skuvid_quality_attempts", "Generation attempts per job.", buckets=(1, 2, 3, 4, 5, 10), registry=r
        )
        self.in_flight = Gauge("skuvid_render_jobs_in_flight", "Render jobs queued or running.", registry=r)
        self.paused = Gauge("skuvid_renderer_paused", "1 while the renderer pauses its partitions.", registry=r)
        self.video_bytes = Histogram(
            "skuvid_video_bytes", "Size of published MP4s.",
            buckets=(1e5, 2.5e5, 5e5, 1e6, 2e6, 5e6, 1e7, 5e7), registry=r,
        )
        # ---- where the time of a render goes ---------------------------------------------------------
        self.stage_seconds = Histogram(
            "skuvid_stage_seconds", "Wall time of one stage of a render request (every attempt observed).",
            ["stage"], buckets=STAGE_BUCKETS, registry=r,
        )
        self.model_load_seconds = Gauge(
            "skuvid_model_load_seconds", "Wall time of the last model load (pipeline and quality gate).", registry=r
        )
        self.gpu_clock = GpuClock()
        r.register(self.gpu_clock)  # skuvid_gpu_busy_seconds_total, skuvid_wall_seconds_total
        self.gpu_memory_allocated = Gauge(
            "skuvid_gpu_memory_allocated_bytes", "CUDA memory held by tensors now (torch allocator).", registry=r
        )
        self.gpu_memory_peak = Gauge(
            "skuvid_gpu_memory_peak_bytes", "Peak CUDA memory held by tensors since the last reset (per job).",
            registry=r,
        )
        # ---- cost ------------------------------------------------------------------------------------
        self.gpu_seconds = Counter(
            "skuvid_gpu_seconds_total", "GPU wall time of render attempts, by what it bought (outcome).",
            ["outcome"], registry=r,
        )
        self.cost_cny = Counter(
            "skuvid_cost_cny_total", "GPU cost of render attempts in CNY (gpu seconds x SKUVID_GPU_PRICE_CNY_PER_HOUR).",
            ["outcome"], registry=r,
        )
        # ---- Kafka -----------------------------------------------------------------------------------
        self.consumer_lag = Gauge(
            "skuvid_consumer_lag_records",
            "Records not yet committed by this process's consumer group member, per assigned partition.",
            ["group", "topic", "partition"], registry=r,
        )
        self._lag_lock = threading.Lock()
        self._lag_series: dict[str, set[tuple[str, str]]] = {}
        # ---- process ---------------------------------------------------------------------------------
        self.build_info = Gauge(
            "skuvid_build_info", "Always 1; the labels say what runs.", ["version", "model", "commit"], registry=r
        )
        self.build_info.labels(_package_version(), model, commit).set(1)
        if r is not REGISTRY:  # the default registry already has both
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self._initialise_series()

    def _initialise_series(self) -> None:
        for reason in Reason:
            self.failures.labels(reason.value)
            self.dead_letters.labels(reason.value)
        for outcome in RENDER_OUTCOMES:
            self.renders.labels(outcome)
        for outcome in COST_OUTCOMES:
            self.gpu_seconds.labels(outcome)
            self.cost_cny.labels(outcome)
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        for lane in Lane:
            self.requests_planned.labels(lane.value)
        for topic in CONSUMED_TOPICS:
            self.events_consumed.labels(topic)

    # ---- stages ----------------------------------------------------------------------------------------

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Record one stage's wall time; ``stage`` is one of ``STAGES`` (labels stay bounded)."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        self.stage_seconds.labels(stage).observe(seconds)

    @contextmanager
    def time_stage(self, stage: str) -> Iterator[None]:
        """``with metrics.time_stage("upload"): ...`` — observed whether the block succeeds or raises."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds.labels(stage).observe(time.perf_counter() - started)

    # ---- cost --------------------------------------------------------------------------------------------

    def charge(self, outcome: str, gpu_seconds: float, price_cny_per_hour: float) -> None:
        """Count the GPU time of one render attempt and its cost under ``outcome`` (ready, failed, retried)."""
        if outcome not in COST_OUTCOMES:
            raise ValueError(f"unknown cost outcome {outcome!r}; outcomes are {', '.join(COST_OUTCOMES)}")
        if gpu_seconds < 0 or price_cny_per_hour < 0:
            raise ValueError(f"gpu_seconds and price must be >= 0, got {gpu_seconds} and {price_cny_per_hour}")
        self.gpu_seconds.labels(outcome).inc(gpu_seconds)
        self.cost_cny.labels(outcome).inc(gpu_seconds * price_cny_per_hour / 3600)

    # ---- GPU memory --------------------------------------------------------------------------------------

    def update_gpu_memory(self, device: object = None, *, reset_peak: bool = False) -> None:
        """Copy torch's CUDA allocator figures for ``device`` (None: the current one) into the memory gauges;
        with ``reset_peak`` the peak restarts (call after each job: the gauge then holds that job's peak).
        Does nothing unless this process has already imported torch and initialised CUDA: it never imports
        torch or starts a CUDA context."""
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_initialized():
            return
        self.gpu_memory_allocated.set(torch.cuda.memory_allocated(device))
        self.gpu_memory_peak.set(torch.cuda.max_memory_allocated(device))
        if reset_peak:
            torch.cuda.reset_peak_memory_stats(device)

    # ---- consumer lag ------------------------------------------------------------------------------------

    def set_lag(self, group: str, lags: Mapping[tuple[str, int], int]) -> None:
        """Replace ``group``'s lag series by ``lags`` ((topic, partition) -> records): partitions this process
        no longer owns lose their series, so ``sum by (group, topic)`` over all pods counts each partition
        once."""
        current = {(topic, str(partition)) for topic, partition in lags}
        with self._lag_lock:
            for topic, partition in self._lag_series.get(group, set()) - current:
                self.consumer_lag.remove(group, topic, partition)
            for (topic, partition), records in lags.items():
                self.consumer_lag.labels(group, topic, str(partition)).set(max(int(records), 0))
            self._lag_series[group] = current

    # ---- serving -----------------------------------------------------------------------------------------

    def serve(self, port: int, host: str = "0.0.0.0") -> HealthServer | None:
        """Serve /metrics, /healthz and /readyz on ``port`` (0: do nothing, as ``Settings.metrics_port``).

        Returns the started ``HealthServer`` so the caller can add its checks; with none added, /healthz and
        /readyz answer 200 (the old /metrics-only behaviour)."""
        if not port:
            return None
        from skuvid.health import HealthServer

        return HealthServer(port, self.registry, host=host).start()


class GpuClock:
    """Busy and wall seconds of this process's GPU worker, as counters computed at scrape time.

    ``start()`` when the GPU can take work (after the model load); ``with clock.busy():`` around each
    generation. ``rate(skuvid_gpu_busy_seconds_total) / rate(skuvid_wall_seconds_total)`` is the busy ratio;
    a job in progress counts as it runs, not all at once when it ends. ``busy()`` starts the clock if
    ``start()`` was not called. Thread-safe: the worker thread marks, the scrape thread reads.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._started: float | None = None
        self._busy_total = 0.0
        self._busy_since: float | None = None
        self._depth = 0

    def start(self) -> None:
        with self._lock:
            if self._started is None:
                self._started = self.clock()

    @contextmanager
    def busy(self) -> Iterator[None]:
        self.busy_begin()
        try:
            yield
        finally:
            self.busy_end()

    def busy_begin(self) -> None:
        """Start a busy span (nested spans count once); pair with ``busy_end``."""
        with self._lock:
            now = self.clock()
            if self._started is None:
                self._started = now
            if self._depth == 0:
                self._busy_since = now
            self._depth += 1

    def busy_end(self) -> None:
        with self._lock:
            if self._depth == 0:
                return  # unpaired: nothing is running
            self._depth -= 1
            if self._depth == 0 and self._busy_since is not None:
                self._busy_total += self.clock() - self._busy_since
                self._busy_since = None

    def busy_seconds(self) -> float:
        with self._lock:
            running = self.clock() - self._busy_since if self._busy_since is not None else 0.0
            return self._busy_total + running

    def wall_seconds(self) -> float:
        with self._lock:
            return self.clock() - self._started if self._started is not None else 0.0

    def collect(self):
        busy = CounterMetricFamily("skuvid_gpu_busy_seconds", "Seconds the GPU worker spent generating.")
        busy.add_metric([], self.busy_seconds())
        wall = CounterMetricFamily("skuvid_wall_seconds", "Seconds since the GPU worker could take work.")
        wall.add_metric([], self.wall_seconds())
        return [busy, wall]


def _package_version() -> str:
    try:
        return version("skuvid")
    except PackageNotFoundError:
        return "unknown"
