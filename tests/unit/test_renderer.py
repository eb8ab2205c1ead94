"""RendererService outcomes with doubles for the broker side (the real-Kafka path is in test_end_to_end)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from aiokafka import ConsumerRecord, TopicPartition

from consumers.planning import Planner
from consumers.renderer import RendererService
from inference.prompt import PromptEngine
from inference.quality import GateResult
from inference.render_job import RenderJob
from producers.emit import parse_lines
from schemas.codec import encode_value
from schemas.events import DeadLetter, Reason, VideoFailed, VideoReady
from schemas.topics import DEAD_LETTER, PRODUCT_CREATED, VIDEO_FAILED, VIDEO_READY, VIDEO_REQUESTED
from skuvid.metrics import Metrics
from skuvid.settings import Settings
from skuvid.storage import LocalStore

DATA = Path(__file__).parents[1] / "data"


class PublisherDouble:
    """Records what would be published (test double for producers.publisher.Publisher)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, object]] = []

    async def publish(self, topic, event):
        self.sent.append((topic.name, event))


class GeneratorDouble:
    """Smooth moving frames instead of a diffusion model (test double for VideoGenerator)."""

    model_id = "tiny"

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, *, prompt, negative_prompt, params, image=None, on_step=None):
        self.calls += 1
        t = np.arange(params.num_frames)[:, None, None]
        x = np.arange(params.width)[None, None, :]
        y = np.arange(params.height)[None, :, None]
        luma = (96 + 40 * np.sin((x + 3 * t) / 17.0) + 30 * np.cos(y / 23.0)).astype(np.uint8)
        return np.repeat(luma[..., None], 3, axis=3)


class GateDouble:
    def __init__(self, passed: bool) -> None:
        self.passed = passed

    def evaluate(self, frames, prompt_text, product_image=None):
        return GateResult(passed=self.passed, score=0.0 if self.passed else -1.0, scores={"motion": 1.0},
                          failures=[] if self.passed else ["frozen"])


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(model="tiny", resolution="240p", duration_s=2.0, steps=2, quality_max_attempts=2,
                    quality_publish_best_below_gate=False,
                    local_store_dir=tmp_path / "cdn", image_file_root=DATA.parents[1])


def request_for(settings: Settings, sku: str = "SKU-1002"):
    event = {e.sku: e for e in parse_lines(PRODUCT_CREATED, DATA / "catalog.jsonl", 1 << 20)[0]}[sku]
    return Planner(PromptEngine.load(), settings).plan(event.snapshot(), source_event_id=event.event_id).requests[0]


def record(value: bytes, offset: int = 7) -> ConsumerRecord:
    return ConsumerRecord(VIDEO_REQUESTED.name, 2, offset, 0, 0, b"k", value, None, 1, len(value), [])


def service(settings, *, passed=True):
    generator = GeneratorDouble()
    job = RenderJob(settings, generator, GateDouble(passed))
    publisher = PublisherDouble()
    svc = RendererService(settings, job, publisher, LocalStore(settings.local_store_dir), Metrics())
    return svc, publisher, generator


async def test_bad_record_is_dead_lettered_with_position(settings):
    svc, publisher, _ = service(settings)
    await svc.handle(record(b"{nope", offset=41))
    [(topic, letter)] = publisher.sent
    assert topic == DEAD_LETTER.name and isinstance(letter, DeadLetter)
    assert (letter.reason, letter.partition, letter.offset) == (Reason.INVALID_JSON, 2, 41)


async def test_rendered_request_is_stored_then_published_and_reused_on_redelivery(settings):
    svc, publisher, generator = service(settings)
    request = request_for(settings)
    await svc.handle(record(encode_value(request)))
    [(topic, ready)] = publisher.sent
    assert topic == VIDEO_READY.name and isinstance(ready, VideoReady)
    assert Path(ready.video_url.removeprefix("file://")).stat().st_size == ready.bytes
    await svc.handle(record(encode_value(request)))  # redelivery after a crash before the commit
    assert generator.calls == 1
    assert publisher.sent[1] == (VIDEO_READY.name, ready)


async def test_feed_cut_is_uploaded_and_announced(tmp_path):
    settings = Settings(model="tiny", feed_crop=True, local_store_dir=tmp_path / "cdn",
                        image_file_root=DATA.parents[1])
    svc, publisher, _ = service(settings)
    await svc.handle(record(encode_value(request_for(settings))))
    [(_, ready)] = publisher.sent
    feed = Path(ready.feed_video_url.removeprefix("file://"))
    assert feed.name.endswith(".feed.mp4") and feed.stat().st_size > 0


async def test_quality_gate_failure_retries_then_publishes_video_failed(settings):
    svc, publisher, generator = service(settings, passed=False)
    request = request_for(settings)
    await svc.handle(record(encode_value(request)))
    [(topic, failed)] = publisher.sent
    assert topic == VIDEO_FAILED.name and isinstance(failed, VideoFailed)
    assert failed.reason is Reason.QUALITY_GATE
    assert failed.request_key == request.request_key
    assert generator.calls == settings.quality_max_attempts


async def test_request_for_another_model_fails_without_rendering(settings):
    svc, publisher, generator = service(settings)
    request = request_for(settings).model_copy(update={"model": "someone/else"})
    await svc.handle(record(encode_value(request)))
    assert publisher.sent[0][1].reason is Reason.INVALID_PARAMS
    assert generator.calls == 0



# --- failure semantics: what an error means decides the outcome -------------------------------------------


class FailingStore(LocalStore):
    """A store whose writes raise ``error`` (test double for an S3 endpoint that is down or refuses us)."""

    def __init__(self, root, error: Exception) -> None:
        super().__init__(root)
        self.error = error

    async def put(self, key, data, content_type):
        raise self.error


def failing_service(settings, error: Exception):
    svc, publisher, generator = service(settings)
    svc.store = FailingStore(settings.local_store_dir, error)
    return svc, publisher, generator


async def test_transient_storage_fault_is_retried_with_backoff_then_fails_with_attempts(tmp_path):
    settings = Settings(model="tiny", local_store_dir=tmp_path / "cdn", image_file_root=DATA.parents[1],
                        max_attempts=3, retry_backoff_s=0.01, retry_backoff_max_s=0.02)
    svc, publisher, _ = failing_service(settings, ConnectionError("S3 endpoint refused the connection"))
    rec = record(encode_value(request_for(settings)))
    assert await svc.handle(rec) is False and await svc.handle(rec) is False
    assert publisher.sent == []  # nothing published, offset held: the partition is paused and sought back
    retry = svc.retries[TopicPartition(rec.topic, rec.partition)]
    assert (retry.offset, retry.attempt) == (rec.offset, 2)
    assert await svc.handle(rec) is True  # the third attempt is the last: the outcome is published
    [(topic, failed)] = publisher.sent
    assert topic == VIDEO_FAILED.name and failed.reason is Reason.STORAGE_UNAVAILABLE and failed.attempts == 3


async def test_a_bug_while_rendering_is_a_permanent_failure_not_a_crash(settings):
    svc, publisher, generator = service(settings)
    generator.generate = lambda **_: (_ for _ in ()).throw(RuntimeError("kernel exploded"))
    assert await svc.handle(record(encode_value(request_for(settings)))) is True
    [(topic, failed)] = publisher.sent
    assert topic == VIDEO_FAILED.name and failed.reason is Reason.INTERNAL_ERROR and "kernel exploded" in failed.message


async def test_an_enormous_failure_is_published_bounded_and_flagged(settings):
    svc, publisher, _ = failing_service(settings, ValueError("bad url " + "%41" * 3_000_000))
    assert await svc.handle(record(encode_value(request_for(settings)))) is True
    [(_, failed)] = publisher.sent
    assert failed.truncated and len(encode_value(failed)) < 16_384


async def test_refused_credentials_end_the_process(settings):
    from botocore.exceptions import ClientError

    from skuvid.errors import FatalError

    denied = ClientError({"Error": {"Code": "InvalidAccessKeyId", "Message": "no such key"}}, "PutObject")
    svc, publisher, _ = failing_service(settings, denied)
    with pytest.raises(FatalError):
        await svc.handle(record(encode_value(request_for(settings))))
    assert publisher.sent == []


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    from consumers.renderer import backoff_s

    delays = [backoff_s(n, 1.0, 10.0) for n in range(1, 7)]
    assert 0.5 <= delays[0] <= 1.0 and 1.0 <= delays[1] <= 2.0 and 4.0 <= delays[3] <= 8.0
    assert all(d <= 10.0 for d in delays)


class StalledGenerator(GeneratorDouble):
    """A generator that hangs for ``seconds`` (test double for a GPU job that stopped making progress)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def generate(self, **kwargs):
        time.sleep(self.seconds)
        return super().generate(**kwargs)


async def test_healthz_fails_while_a_render_is_stalled(tmp_path):
    import httpx

    from skuvid.health import HealthServer

    settings = Settings(model="tiny", local_store_dir=tmp_path / "cdn", image_file_root=DATA.parents[1],
                        render_stall_s=0.3)
    svc, _, _ = service(settings)
    svc.job.generator = StalledGenerator(1.5)
    server = HealthServer(0, svc.metrics.registry, host="127.0.0.1").start()
    server.add_liveness("render", svc.stall.check)
    try:
        url = f"http://127.0.0.1:{server.port}/healthz"
        async with httpx.AsyncClient() as client:
            assert (await client.get(url)).status_code == 200
            job = asyncio.create_task(svc.handle(record(encode_value(request_for(settings)))))
            await asyncio.sleep(0.8)
            stalled = await client.get(url)
            assert stalled.status_code == 503 and not stalled.json()["checks"]["render"]["ok"]
            assert await job is True
            assert (await client.get(url)).status_code == 200
    finally:
        server.stop()


async def test_release_lets_the_revoked_partitions_render_finish_and_drops_their_queue(settings):
    svc, _, _ = service(settings.model_copy(update={"revoke_grace_s": 5.0}))
    revoked, kept = TopicPartition(VIDEO_REQUESTED.name, 2), TopicPartition(VIDEO_REQUESTED.name, 3)
    finished = asyncio.Event()

    async def rendering() -> None:
        await asyncio.sleep(0.2)
        finished.set()

    svc.active[revoked] = asyncio.create_task(rendering())
    svc.queue.put_nowait(record(b"{}", offset=8))  # partition 2, queued behind the render
    svc.queue.put_nowait(ConsumerRecord(VIDEO_REQUESTED.name, 3, 1, 0, 0, b"k", b"{}", None, 1, 2, []))
    started = time.monotonic()
    await svc.release({revoked})
    assert finished.is_set() and time.monotonic() - started >= 0.2
    assert svc.queue.qsize() == 1 and svc.queue.take(set()).partition == kept.partition
    assert not svc.releasing


async def test_release_gives_up_waiting_after_the_grace(settings):
    svc, _, _ = service(settings.model_copy(update={"revoke_grace_s": 0.1}))
    revoked = TopicPartition(VIDEO_REQUESTED.name, 2)
    stuck = svc.active[revoked] = asyncio.create_task(asyncio.sleep(30))
    started = time.monotonic()
    await svc.release({revoked})
    assert time.monotonic() - started < 1.0 and not stuck.done()
    stuck.cancel()
