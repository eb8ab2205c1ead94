"""End to end on real Apache Kafka: catalog events in, labelled MP4s and video.ready out.

One planner and one renderer process (real ``skuvid serve``) serve the whole module, in order:
8 products -> 8 videos; the same 8 again -> nothing new; bad records -> dead letters while the service
keeps going; a renderer SIGKILLed mid-job -> after restart the request is rendered once, nothing lost.
"""

from __future__ import annotations

import base64
import time
import uuid
from pathlib import Path

import av
import numpy as np
import orjson
import pytest

from inference.fonts import find_cjk_font
from inference.image_fetch import fetch_image_for
from inference.labels import mark_text_for, read_aigc, render_mark
from inference.pipeline import VideoGenerator
from schemas.events import DeadLetter, Reason, VideoReady
from schemas.topics import DEAD_LETTER, PRODUCT_CREATED, PROMO_STARTED, REQUEST_TOPICS, VIDEO_READY
from tests.integration.harness import (
    DATA,
    Service,
    end_offsets,
    produce_raw,
    read_until,
    run,
    service_settings,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PRODUCTS = DATA.joinpath("catalog.jsonl").read_bytes().splitlines()[:8]
PRODUCT_SKUS = [orjson.loads(line)["sku"] for line in PRODUCTS]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def settings(kafka_broker, work):
    return service_settings(kafka_broker.bootstrap, work)


@pytest.fixture(scope="module")
def services(settings, work):
    planner = Service("planner", settings, work)
    renderer = Service("renderer", settings, work)
    state = {"planner": planner, "renderer": renderer}
    yield state
    for service in state.values():
        service.stop()


def ready_for(bootstrap: str, skus: set[str], count: int, timeout_s: float) -> list[VideoReady]:
    def done(events):
        return len({e.request_key for e in events if isinstance(e, VideoReady) and e.sku in skus}) >= count

    events = run(read_until(bootstrap, [VIDEO_READY.name], done, timeout_s))
    return [e for e in events if e.sku in skus]


def test_eight_products_become_eight_labelled_videos(settings, services):
    bootstrap = settings.kafka_bootstrap
    run(produce_raw(bootstrap, PRODUCT_CREATED.name, PRODUCTS, [s.encode() for s in PRODUCT_SKUS]))
    ready = ready_for(bootstrap, set(PRODUCT_SKUS), 8, timeout_s=300)
    by_sku = {e.sku: e for e in ready}
    assert sorted(by_sku) == sorted(PRODUCT_SKUS), services["renderer"].log()[-3000:]
    for event in by_sku.values():
        path = local_path(event.video_url)
        assert_playable_mp4(path, event, settings.fps)
        assert read_aigc(path).produce_id == event.request_key
        assert "clip_text" in event.quality.scores  # the (tiny) CLIP scored it; its score travels
    assert_mark_visible(next(iter(by_sku.values())), settings)


def local_path(url: str) -> Path:
    assert url.startswith("file://"), url
    return Path(url.removeprefix("file://"))


def assert_playable_mp4(path: Path, event: VideoReady, fps: int) -> None:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert float(stream.average_rate) == fps
    assert len(frames) == event.num_frames
    assert frames[0].shape == (event.height, event.width, 3)
    assert path.stat().st_size == event.bytes


def assert_mark_visible(event: VideoReady, settings) -> None:
    """The decoded first frame differs from the unmarked generated frame inside the mark's box, not outside."""
    from schemas.events import RenderParams  # noqa: PLC0415 - only this check needs it

    path = local_path(event.video_url)
    with av.open(str(path)) as container:
        marked = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(np.int16)
    generator = VideoGenerator.load(settings)
    requested = run(read_until(settings.kafka_bootstrap, [t.name for t in REQUEST_TOPICS],
                               lambda es: any(e.request_key == event.request_key for e in es), 30))
    request = next(e for e in requested if e.request_key == event.request_key)
    params = RenderParams.model_validate(request.params.model_dump() | {"seed": event.provenance.seed})
    plain = generator.generate(prompt=request.prompt.positive, negative_prompt=request.prompt.negative,
                               params=params,
                               image=fetch_image_for(settings, request.image_url) if request.image_url else None)
    plain0 = plain[0].astype(np.int16)
    patch = render_mark(mark_text_for(request.prompt.language), frame_w=event.width, frame_h=event.height,
                        corner=settings.mark_corner, font_path=find_cjk_font(settings.font_path))
    h, w = patch.rgba.shape[:2]
    inside = np.zeros(marked.shape[:2], bool)
    inside[patch.y:patch.y + h, patch.x:patch.x + w] = patch.rgba[..., 3] > 128
    diff = np.abs(marked - plain0).mean(axis=2)
    assert diff[inside].mean() > 3 * diff[~inside].mean() + 5, (diff[inside].mean(), diff[~inside].mean())



def requested_count(bootstrap: str) -> int:
    return sum(sum(run(end_offsets(bootstrap, t.name)).values()) for t in REQUEST_TOPICS)


def test_resent_products_render_nothing_new(settings, services):
    bootstrap = settings.kafka_bootstrap
    requested_before = requested_count(bootstrap)
    ready_before = sum(run(end_offsets(bootstrap, VIDEO_READY.name)).values())
    marker_sku = f"SKU-MARK-{uuid.uuid4().hex[:6]}"
    marker = orjson.loads(PRODUCTS[0]) | {"sku": marker_sku, "event_id": f"evt-{marker_sku}"}
    resend = [*PRODUCTS, orjson.dumps(marker)]
    run(produce_raw(bootstrap, PRODUCT_CREATED.name, resend, [orjson.loads(v)["sku"].encode() for v in resend]))
    # The marker product is new: once its video is out, the planner has seen every resent record before it.
    ready_for(bootstrap, {marker_sku}, 1, timeout_s=180)
    assert requested_count(bootstrap) == requested_before + 1
    assert sum(run(end_offsets(bootstrap, VIDEO_READY.name)).values()) == ready_before + 1


def test_bad_records_are_dead_lettered_and_service_keeps_consuming(settings, services):
    bootstrap = settings.kafka_bootstrap
    good = orjson.loads(PRODUCTS[1])
    tag = uuid.uuid4().hex[:6]
    bad = {
        Reason.INVALID_JSON: b'{"sku": "SKU-BROKEN-' + tag.encode() + b'", ',
        "wrong_type": orjson.dumps(good | {"hot": "yes", "event_id": f"evt-wt-{tag}"}),
        "missing": orjson.dumps({k: v for k, v in good.items() if k != "title"} | {"event_id": f"evt-m-{tag}"}),
        Reason.OVERSIZED_PAYLOAD: orjson.dumps(good | {"event_id": f"evt-big-{tag}"}) + b" " * 1_100_000,
    }
    after_sku = f"SKU-AFTER-{tag}"
    after = orjson.dumps(good | {"sku": after_sku, "event_id": f"evt-after-{tag}"})
    run(produce_raw(bootstrap, PRODUCT_CREATED.name, [*bad.values(), after]))

    def done(records):
        return sum(tag.encode() in base64.b64decode(r.value_b64) for r in records) >= 4

    letters = run(read_until(bootstrap, [DEAD_LETTER.name], done, timeout_s=120))
    mine = [r for r in letters if isinstance(r, DeadLetter) and tag.encode() in base64.b64decode(r.value_b64)]
    reasons = sorted(r.reason.value for r in mine)
    assert reasons == sorted(["invalid_json", "schema_violation", "schema_violation", "oversized_payload"])
    assert all(r.topic == PRODUCT_CREATED.name and r.offset >= 0 for r in mine)
    originals = {base64.b64decode(r.value_b64) for r in mine if not r.value_truncated}
    assert bad[Reason.INVALID_JSON] in originals
    ready_for(bootstrap, {after_sku}, 1, timeout_s=180)  # the planner kept consuming past them
    assert services["planner"].alive()


def test_promo_fans_out_over_listed_skus_and_categories(settings, services):
    bootstrap = settings.kafka_bootstrap
    promo_id = f"P-{uuid.uuid4().hex[:6]}"
    promo = orjson.loads(DATA.joinpath("promo.jsonl").read_bytes().splitlines()[0]) | {
        "event_id": f"evt-{promo_id}", "promo_id": promo_id, "skus": ["SKU-1001"], "categories": ["kitchen"],
    }
    run(produce_raw(bootstrap, PROMO_STARTED.name, [orjson.dumps(promo)], [promo_id.encode()]))

    def done(events):
        return {e.sku for e in events if isinstance(e, VideoReady) and promo_id in e.variant_id} >= {
            "SKU-1001", "SKU-3001"}

    events = run(read_until(bootstrap, [VIDEO_READY.name], done, timeout_s=180))
    promo_videos = {e.sku: e for e in events if isinstance(e, VideoReady) and promo_id in e.variant_id}
    assert set(promo_videos) == {"SKU-1001", "SKU-3001"}  # 厨具 is the kitchen template; nothing else matched
    assert all(promo["copy_text"] not in e.prompt for e in promo_videos.values())


def test_renderer_killed_mid_job_renders_once_after_restart(settings, services, work):
    bootstrap = settings.kafka_bootstrap
    sku = f"SKU-KILL-{uuid.uuid4().hex[:6]}"
    product = orjson.loads(PRODUCTS[2]) | {"sku": sku, "event_id": f"evt-{sku}"}
    run(produce_raw(bootstrap, PRODUCT_CREATED.name, [orjson.dumps(product)], [sku.encode()]))
    renderer = services["renderer"]
    renderer.wait_for_log(f"render start {sku}", timeout_s=120)
    renderer.kill()
    killed_log = renderer.log()
    assert f"published {sku}" not in killed_log, "the job finished before the kill: nothing was tested"
    services["renderer"] = Service("renderer", settings, work)
    ready = ready_for(bootstrap, {sku}, 1, timeout_s=240)
    time.sleep(3)  # a second publication, if any, would follow right after the first
    ready = ready_for(bootstrap, {sku}, 1, timeout_s=10)
    assert len(ready) == 1
    assert_playable_mp4(local_path(ready[0].video_url), ready[0], 24)
