"""Every Prometheus metric skuvid exports, in one registry (tests make their own with ``Metrics()``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Video work spans a second (tiny model) to half an hour (720p, 50 steps on a small card).
RENDER_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
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
            "skuvid_renders_total", "Render jobs finished, by outcome (ready, failed, reused).", ["outcome"], registry=r
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

    def serve(self, port: int) -> None:
        """Expose /metrics on ``port`` (0: do nothing)."""
        if port:
            start_http_server(port, registry=self.registry)
