"""``skuvid serve``: wire settings, model, broker clients and store into the planner and renderer services."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time

from consumers.planner import run_planner
from consumers.renderer import RendererService
from inference.clip_score import clip_from_settings
from inference.quality import QualityGate
from inference.pipeline import VideoGenerator
from inference.render_job import RenderJob
from producers.publisher import Publisher
from skuvid.metrics import Metrics
from skuvid.settings import Settings
from skuvid.storage import open_store

log = logging.getLogger(__name__)


def load_render_job(settings: Settings) -> RenderJob:
    """The model and quality gate, loaded once per worker process."""
    generator = VideoGenerator.load(settings)
    gate = QualityGate.from_settings(settings, clip_from_settings(settings))
    return RenderJob(settings, generator, gate)


async def run_renderer(settings: Settings) -> None:
    """Run one renderer until SIGTERM/SIGINT; the job in progress is finished, published and committed."""
    job = await asyncio.to_thread(load_render_job, settings)
    metrics = Metrics()
    metrics.serve(settings.metrics_port)  # after the model load: readiness means able to render
    publisher = await Publisher.start(settings, source="urn:skuvid:renderer")
    store = open_store(settings)
    service = RendererService(settings, job, publisher, store, metrics)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    log.info("renderer ready: model %s, %d in flight", job.generator.model_id, settings.max_in_flight)
    try:
        await service.run()
    finally:
        await publisher.stop()
        await store.close()


def serve(settings: Settings, role: str) -> int:
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if role == "planner":
        run_planner(settings)
        return 0
    if role == "renderer":
        asyncio.run(run_renderer(settings))
        return 0
    return _serve_both()


def _serve_both() -> int:
    """Planner and renderer as two processes (as they run in production); when one ends, both end."""
    children = [
        subprocess.Popen([sys.executable, "-m", "skuvid.cli", "serve", "--role", role])
        for role in ("planner", "renderer")
    ]

    def stop_all(signum=signal.SIGTERM, _frame=None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    while all(child.poll() is None for child in children):
        time.sleep(0.5)
    stop_all()
    return max(child.wait() for child in children)
