"""``skuvid bench renderer``: does the renderer keep the GPU busy? Real service, real Kafka, fake model.

The real ``RendererService`` runs on a real Apache Kafka broker with real post-processing (quality gate,
AIGC mark and metadata, H.264 of 480p 121-frame clips) and a real upload (local store); only the model is
``FakeGenerator``, a named test double that holds the "GPU" thread for a fixed ``gen_s`` per clip and returns
real frames. At steady load (a backlog on every partition) the figure is the GPU busy ratio: seconds inside
generation over the wall time from the first generation's start to the last one's end.

Two runs side by side on fresh brokers: ``serial`` (one record in flight: the old loop) and ``pipeline``
(the service's defaults: generation overlaps post-processing and upload). Goal: ``gpu_busy_ratio >= 0.95``
at ``gen_s = 4`` on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from bench.fake_generator import FakeGenerator
from consumers.planning import Planner
from consumers.renderer import RendererService
from inference.prompt import PromptEngine
from inference.quality import QualityGate
from inference.render_job import RenderJob
from producers.emit import parse_lines
from producers.publisher import Publisher
from schemas.codec import decode
from schemas.events import VideoReady
from schemas.topics import ALL_TOPICS, PRODUCT_CREATED, VIDEO_READY, request_topic
from skuvid.brokers import KafkaBroker, create_topics
from skuvid.metrics import Metrics
from skuvid.settings import Settings
from skuvid.storage import LocalStore

REPO = Path(__file__).resolve().parents[1]
MODEL = "bench-fake-generator"


class TimedGenerator(FakeGenerator):
    """``FakeGenerator`` (a test double) that also records when each generation ran."""

    def __init__(self, seconds: float) -> None:
        super().__init__(MODEL, seconds=seconds)
        self.spans: list[tuple[float, float]] = []
        self._spans_lock = threading.Lock()

    def generate(self, **kwargs):
        started = time.monotonic()
        frames = super().generate(**kwargs)
        with self._spans_lock:
            self.spans.append((started, time.monotonic()))
        return frames


def bench_settings(bootstrap: str, work: Path, max_in_flight: int) -> Settings:
    return Settings(
        kafka_bootstrap=bootstrap, renderer_group=f"bench-renderer-{max_in_flight}", model=MODEL,
        resolution="480p", duration_s=5.0, steps=4, guidance_scale=1.0, clip_model=None,
        quality_clip_text_min=None, quality_clip_image_min=None, quality_max_attempts=1,
        max_in_flight=max_in_flight, local_store_dir=work / "cdn", image_file_root=REPO,
        session_timeout_ms=6000, heartbeat_interval_ms=1000,
    )


def requests(settings: Settings, clips: int) -> list:
    """``clips`` distinct 480p requests (catalog products with unique SKUs), spread over the partitions."""
    planner = Planner(PromptEngine.load(), settings)
    catalog = parse_lines(PRODUCT_CREATED, REPO / "tests" / "data" / "catalog.jsonl", 1 << 20)[0]
    out = []
    for i in range(clips):
        product = catalog[i % len(catalog)].snapshot()
        product = product.model_copy(update={"sku": f"BENCH-{i:04d}", "image_url": None, "hot": False})
        out.append(planner.plan(product, source_event_id=f"bench-{i}").requests[0])
    return out


async def run_mode(bootstrap: str, work: Path, max_in_flight: int, gen_s: float, clips: int) -> dict[str, Any]:
    settings = bench_settings(bootstrap, work, max_in_flight)
    generator = TimedGenerator(gen_s)
    job = RenderJob(settings, generator, QualityGate.from_settings(settings, None))
    publisher = await Publisher.start(settings, source="urn:skuvid:bench")
    for request in requests(settings, clips):
        await publisher.publish(request_topic(request.lane), request)
    service = RendererService(settings, job, publisher, LocalStore(settings.local_store_dir), Metrics())
    task = asyncio.create_task(service.run())
    try:
        await wait_for_ready(settings, clips, timeout_s=clips * (gen_s + 10) + 60)
    finally:
        service.stop()
        await task
        await publisher.stop()
    first, last = min(s for s, _ in generator.spans), max(e for _, e in generator.spans)
    busy = sum(e - s for s, e in generator.spans)
    wall = last - first
    return {"clips": len(generator.spans), "gpu_busy_ratio": round(busy / wall, 4),
            "clips_per_min": round(60 * len(generator.spans) / wall, 3), "wall_s": round(wall, 2),
            "measured_gen_s": round(busy / len(generator.spans), 3)}


async def wait_for_ready(settings: Settings, clips: int, timeout_s: float) -> None:
    consumer = AIOKafkaConsumer(VIDEO_READY.name, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < clips:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(seen)}/{clips} video.ready after {timeout_s:.0f} s")
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    event = decode(VIDEO_READY, record.value)
                    assert isinstance(event, VideoReady)
                    seen.add(event.request_key)
    finally:
        await consumer.stop()


def run(gen_s: float = 4.0, clips: int = 12) -> dict[str, Any]:
    modes = {"serial": 1, "pipeline": Settings().max_in_flight}
    figures = {}
    for name, max_in_flight in modes.items():
        with tempfile.TemporaryDirectory(prefix=f"skuvid-bench-renderer-{name}-") as tmp:
            with KafkaBroker.start(Path(tmp) / "kafka", repo_root=REPO) as broker:
                create_topics(broker.bootstrap, ALL_TOPICS)
                figures[name] = asyncio.run(run_mode(broker.bootstrap, Path(tmp), max_in_flight, gen_s, clips))
    pipeline = figures["pipeline"]
    return {
        "gen_s": gen_s, "clips": clips, "resolution": "480p", "num_frames": 121,
        "gpu_busy_ratio": pipeline["gpu_busy_ratio"], "clips_per_min": pipeline["clips_per_min"],
        "ideal_clips_per_min": round(60 / gen_s, 3), "serial": figures["serial"], "pipeline": pipeline,
        "speedup_vs_serial": round(pipeline["clips_per_min"] / figures["serial"]["clips_per_min"], 3),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.renderer")
    parser.add_argument("--gen-s", type=float, default=4.0)
    parser.add_argument("--clips", type=int, default=12)
    args = parser.parse_args()
    print(orjson.dumps(run(args.gen_s, args.clips)).decode())
