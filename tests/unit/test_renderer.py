"""RendererService outcomes with doubles for the broker side (the real-Kafka path is in test_end_to_end)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from aiokafka import ConsumerRecord

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

    def generate(self, *, prompt, negative_prompt, params, image=None):
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

