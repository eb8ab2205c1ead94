"""The composition root: settings, model, broker clients and store wired into the processes skuvid runs.

``skuvid render`` (no Kafka) and ``skuvid serve`` (planner and renderer) share this module. Imports of
Kafka clients and of the model's libraries stay inside the functions that need them, so the render path
never loads aiokafka or faust and a bad product file is refused before torch is imported.

Every process ends the same way: SIGTERM starts an orderly drain bounded by ``shutdown_grace_s`` (after
which the process exits, leaving the job in progress uncommitted, to be redelivered); a ``FatalError``
(credentials, missing model, unusable configuration) is one log line and exit code 1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

from skuvid.errors import FatalError
from skuvid.settings import Settings, as_env

if TYPE_CHECKING:
    from inference.render_job import RenderJob

log = logging.getLogger(__name__)

EXIT_FATAL = 1
ROLES = ("planner", "renderer")


def load_render_job(settings: Settings) -> RenderJob:
    """The model and quality gate, loaded once per worker process."""
    from inference.clip_score import clip_from_settings
    from inference.pipeline import VideoGenerator
    from inference.quality import QualityGate
    from inference.render_job import RenderJob

    generator = VideoGenerator.load(settings)
    gate = QualityGate.from_settings(settings, clip_from_settings(settings))
    return RenderJob(settings, generator, gate)


def arm_shutdown_deadline(grace_s: float) -> None:
    """After a stop signal: exit the process in ``grace_s`` seconds whatever it is waiting for (a broker that
    is down, a render that does not end). A thread, so a blocked event loop cannot stop it; uncommitted work
    is redelivered to another worker."""

    def expire() -> None:
        log.error("shutdown took longer than %.0f s: exiting, the job in progress stays uncommitted", grace_s)
        logging.shutdown()
        os._exit(EXIT_FATAL)

    timer = threading.Timer(grace_s, expire)
    timer.daemon = True
    timer.start()


async def preflight(settings: Settings) -> None:
    """Fail fast on what no retry can fix (a wrong password, an untrusted CA: ``FatalError``). A broker that is
    merely down is not fatal: the clients keep reconnecting, so the process starts and waits for it."""
    from skuvid.errors import TransientError
    from skuvid.kafka_clients import check_kafka_access

    try:
        await check_kafka_access(settings)
    except TransientError as exc:
        log.warning("starting although the brokers do not answer yet: %s", exc.message)


async def run_renderer(settings: Settings) -> None:
    """Run one renderer until SIGTERM/SIGINT; the job in progress is finished, published and committed."""
    from consumers.renderer import RendererService
    from producers.publisher import Publisher
    from skuvid.metrics import Metrics
    from skuvid.storage import open_store

    await preflight(settings)
    job = await asyncio.to_thread(load_render_job, settings)
    metrics = Metrics()
    metrics.serve(settings.metrics_port)  # after the model load: readiness means able to render
    publisher = await Publisher.start(settings, source="urn:skuvid:renderer")
    store = open_store(settings)
    service = RendererService(settings, job, publisher, store, metrics)
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        arm_shutdown_deadline(settings.shutdown_grace_s)
        service.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    log.info("renderer ready: model %s, %d in flight", job.generator.model_id, settings.max_in_flight)
    try:
        await service.run()
    finally:
        await publisher.stop()
        await store.close()


def run_planner(settings: Settings) -> None:
    """Run the planner worker until SIGINT/SIGTERM (faust drains and commits on the way out)."""
    from consumers.planner import create_app, ensure_planner_topics, planner_worker
    from inference.prompt import PromptEngine
    from skuvid.metrics import Metrics

    asyncio.run(preflight(settings))
    ensure_planner_topics(settings)
    metrics = Metrics()
    metrics.serve(settings.metrics_port)
    engine = PromptEngine.load(absolute_terms_policy=settings.absolute_terms_policy)
    app = create_app(settings, engine, metrics)
    worker = planner_worker(app, settings, on_stop_signal=lambda: arm_shutdown_deadline(settings.shutdown_grace_s))
    worker.execute_from_commandline()


def serve(settings: Settings, role: str) -> int:
    """``skuvid serve --role ROLE``: one role in this process, or (``all``) each role in its own process."""
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        if role == "planner":
            run_planner(settings)
        elif role == "renderer":
            asyncio.run(run_renderer(settings))
        else:
            return _serve_all(settings)
    except FatalError as exc:
        log.critical("%s cannot run: %s: %s", role, exc.reason.value, exc.message)
        return EXIT_FATAL
    return 0


def role_ports(settings: Settings) -> dict[str, int]:
    """Health/metrics port of each role under ``serve --role all``: the planner on ``metrics_port``, the
    renderer on the next one (0: no endpoint)."""
    base = settings.metrics_port
    return {role: (base + i if base else 0) for i, role in enumerate(ROLES)}


def _serve_all(settings: Settings) -> int:
    """Planner and renderer as two processes (as they run in production); when one ends, both end."""
    ports = role_ports(settings)
    children = []
    for role in ROLES:
        env = {**os.environ, **as_env(settings.model_copy(update={"metrics_port": ports[role]}), ["metrics_port"])}
        if ports[role]:
            log.info("%s: /metrics, /healthz and /readyz on port %d", role, ports[role])
        children.append(subprocess.Popen([sys.executable, "-m", "skuvid.cli", "serve", "--role", role], env=env))

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
