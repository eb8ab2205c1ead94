"""The composition root: settings, model, broker clients and store wired into the processes skuvid runs.

``skuvid render`` (no Kafka) and ``skuvid serve`` (planner, renderer and listing API) share this module. Imports of
Kafka clients and of the model's libraries stay inside the functions that need them, so the render path
never loads aiokafka and a bad product file is refused before torch is imported.

Every process ends the same way: SIGTERM starts an orderly drain bounded by ``shutdown_grace_s`` (after
which the process exits, leaving the job in progress uncommitted, to be redelivered); a ``FatalError``
(credentials, missing model, unusable configuration) is one log line and exit code 1.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from skuvid.errors import FatalError
from skuvid.settings import Settings, as_env

if TYPE_CHECKING:
    from inference.render_job import RenderJob

log = logging.getLogger(__name__)

EXIT_FATAL = 1
ROLES = ("planner", "renderer", "api")


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


def stop_on_signals(settings: Settings, stop: Callable[[], None]) -> None:
    """On SIGTERM/SIGINT: ``stop()`` the service on the running loop, and exit in ``shutdown_grace_s`` whatever
    it is still waiting for."""

    def on_signal() -> None:
        arm_shutdown_deadline(settings.shutdown_grace_s)
        stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)


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
    """Run one renderer until SIGTERM/SIGINT; the job in progress is finished, published and committed.

    The health server starts first, so probes answer during the model load: /healthz fails when the event
    loop is blocked, a render stalls or the load hangs; /readyz turns 200 once the model is loaded, the
    partitions are assigned and the producer is connected."""
    from consumers.renderer import RendererService
    from inference.stage_timing import PipelineStageHooks
    from producers.publisher import Publisher
    from skuvid.health import LoopHeartbeat, StallWatch
    from skuvid.metrics import Metrics
    from skuvid.storage import open_store

    metrics = Metrics(model=settings.model)
    server = metrics.serve(settings.metrics_port)
    heartbeat, loading = LoopHeartbeat(), StallWatch(settings.render_stall_s, what="model load")
    heartbeat.start()
    await preflight(settings)
    with loading.job(settings.model), metrics.model_load_seconds.time():
        job = await asyncio.to_thread(load_render_job, settings)
    PipelineStageHooks.attach(job.generator.t2v, metrics.observe_stage)  # the i2v pipeline shares its modules
    metrics.gpu_clock.start()
    publisher = await Publisher.start(settings, source="urn:skuvid:renderer")
    store = open_store(settings)
    service = RendererService(settings, job, publisher, store, metrics)
    service.readiness.set("model_loaded", detail=job.generator.model_id)
    service.readiness.set("producer_connected")
    if server is not None:
        server.add_liveness("event_loop", heartbeat.check)
        server.add_liveness("render", service.stall.check)
        server.add_liveness("model_load", loading.check)
        service.readiness.register(server)
    stop_on_signals(settings, service.stop)
    log.info("renderer ready: model %s, %d in flight", job.generator.model_id, settings.max_in_flight)
    try:
        await service.run()
    finally:
        heartbeat.stop()
        await publisher.stop()
        await store.close()
        if server is not None:
            server.stop()


async def run_planner(settings: Settings) -> None:
    """Run the planner until SIGINT/SIGTERM: the batches in progress are finished, acknowledged and committed (the
    local tables are always a prefix of their changelogs). /readyz turns 200 once it joined its group and
    recovered its tables; /healthz fails when the event loop is blocked."""
    from consumers.planner import ensure_planner_topics
    from consumers.planner_service import PlannerService
    from inference.prompt import PromptEngine
    from skuvid.health import LoopHeartbeat
    from skuvid.metrics import Metrics

    metrics = Metrics(model=settings.model)
    server = metrics.serve(settings.metrics_port)
    heartbeat = LoopHeartbeat()
    heartbeat.start()
    await preflight(settings)
    await asyncio.to_thread(ensure_planner_topics, settings)
    engine = PromptEngine.load(absolute_terms_policy=settings.absolute_terms_policy)
    service = PlannerService(settings, engine, metrics)
    gc.freeze()  # the engine's compiled library and every module, never garbage: not scanned by each collection
    if server is not None:
        server.add_liveness("event_loop", heartbeat.check)
        service.readiness.register(server)
    stop_on_signals(settings, service.stop)
    try:
        await service.run()
    finally:
        heartbeat.stop()
        if server is not None:
            server.stop()


# --- the listing API (api/) -----------------------------------------------------------------------------


async def run_api(settings: Settings) -> None:
    """Run one listing API replica until SIGTERM/SIGINT: the video index is read from the beginning of its
    topics in the background while uvicorn serves on ``api_host:api_port`` (lookups answer 503
    ``index_loading`` until it caught up); on a signal uvicorn stops taking requests, first-view sends in
    progress finish, and the Kafka clients close."""
    import uvicorn

    from api.app import create_app
    from api.feed import IndexFeed, ensure_api_topics
    from api.index import VideoIndex
    from api.planned import PlannedReader
    from api.progress import RendererProgress
    from api.service import ApiService
    from inference.prompt import PromptEngine
    from producers.publisher import Publisher
    from schemas.codec import ce_headers, encode_value
    from skuvid.metrics import Metrics

    await preflight(settings)
    await asyncio.to_thread(ensure_api_topics, settings)
    engine = PromptEngine.load(absolute_terms_policy=settings.absolute_terms_policy)
    index = VideoIndex(variant_experiment=settings.api_variant_experiment)
    feed = IndexFeed(settings, index)
    publisher = await Publisher.start(settings, source="urn:skuvid:api")
    reader, progress = PlannedReader(settings), RendererProgress(settings)
    await reader.start()
    await progress.start()

    async def publish(topic, event, key: bytes):
        headers = ce_headers(topic, event, publisher.source)
        return await publisher.publish_raw(topic.name, key, encode_value(event), headers)

    service = ApiService(settings, index, engine, publish=publish, read_planned=reader.read,
                         committed=progress.committed, is_ready=feed.is_ready)
    health = Metrics(model=settings.model).serve(settings.metrics_port)
    if health is not None:
        health.add_readiness("index_caught_up", lambda: (feed.is_ready(), f"{len(index.skus)} SKUs"))

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if not self.should_exit:
                arm_shutdown_deadline(settings.shutdown_grace_s)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(create_app(service, max_body_bytes=settings.api_max_body_bytes), host=settings.api_host,
                            port=settings.api_port, log_config=None, access_log=False, lifespan="off",
                            server_header=False)
    server = Server(config)
    for sig in (signal.SIGTERM, signal.SIGINT):  # uvicorn re-raises the signal after serving: make that a no-op
        signal.signal(sig, server.handle_exit)
    feeding = asyncio.create_task(feed.run(), name="index feed")
    serving = asyncio.create_task(server.serve(), name="http")
    log.info("api: listing API on %s:%d, reading the video index", settings.api_host, settings.api_port)
    try:
        await asyncio.wait({feeding, serving}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await serving
        if feeding.done() and feeding.exception() is not None:
            raise feeding.exception()
    finally:
        feeding.cancel()
        await asyncio.gather(feeding, return_exceptions=True)
        await service.drain()
        await reader.stop()
        await progress.stop()
        await publisher.stop()
        if health is not None:
            health.stop()


# --- end of the listing API ----------------------------------------------------------------------------


def serve(settings: Settings, role: str) -> int:
    """``skuvid serve --role ROLE``: one role in this process, or (``all``) each role in its own process."""
    from skuvid.logs import configure_logging

    configure_logging(settings, ml_libraries=role == "renderer")
    try:
        if role == "planner":
            asyncio.run(run_planner(settings))
        elif role == "renderer":
            asyncio.run(run_renderer(settings))
        elif role == "api":
            asyncio.run(run_api(settings))
        else:
            return _serve_all(settings)
    except FatalError as exc:
        log.critical("%s cannot run: %s: %s", role, exc.reason.value, exc.message)
        return EXIT_FATAL
    return 0


def role_ports(settings: Settings) -> dict[str, int]:
    """Health/metrics port of each role under ``serve --role all``: the planner on ``metrics_port``, the
    renderer on the next one, the API on the one after (0: no endpoint)."""
    base = settings.metrics_port
    return {role: (base + i if base else 0) for i, role in enumerate(ROLES)}


def _serve_all(settings: Settings) -> int:
    """Planner, renderer and listing API as separate processes (as they run in production); when one ends,
    all end."""
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
