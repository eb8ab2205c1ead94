"""The listing API over HTTP in process (httpx + ASGI), Kafka replaced by fakes: bodies, reasons, limits,
render on first view, idempotent on-demand renders, and the checked-in OpenAPI document."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from api.app import create_app
from api.index import VideoIndex
from api.openapi import document, rendered
from api.service import ApiService
from schemas.events import Reason, VideoPlanned
from schemas.export import OUT_DIR
from schemas.topics import ALL_TOPICS, VIDEO_REQUESTED_ONDEMAND
from skuvid.settings import Settings
from tests.unit.test_api_index import engine, failed, planned, plans, product, ready  # noqa: F401 - fixture

BODY = {"prompt": "a ceramic mug on a wooden desk, soft morning light", "duration": 2, "resolution": "240p"}


class FakeKafka:
    """What the service would send, the plans it can read back, the renderers' committed offsets."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, object]] = []
        self.plans: dict[tuple[int, int], VideoPlanned] = {}
        self.offsets: dict[int, int] = {}
        self.fail_sends = False

    async def publish(self, topic, event, key):
        if self.fail_sends:
            raise ConnectionError("broker down")
        self.sent.append((topic.name, key, event))

        class Meta:
            partition, offset = 1, len(self.sent) - 1

        return Meta()

    async def read_planned(self, partition, offset):
        return self.plans.get((partition, offset))

    async def committed(self):
        return self.offsets


@pytest.fixture
def world(engine):  # noqa: F811 - the shared fixture
    settings = Settings(model="tiny", api_enqueue_interval_s=60)
    kafka, index, clock = FakeKafka(), VideoIndex(), {"mono": 0.0}
    ready_flag = {"ready": True}
    service = ApiService(settings, index, engine, publish=kafka.publish, read_planned=kafka.read_planned,
                         committed=kafka.committed, is_ready=lambda: ready_flag["ready"],
                         monotonic=lambda: clock["mono"])
    app = create_app(service, max_body_bytes=4096)
    return {"kafka": kafka, "index": index, "clock": clock, "service": service, "app": app, "ready": ready_flag}


async def call(app, method: str, url: str, **kwargs) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                 base_url="http://api") as client:
        return await client.request(method, url, **kwargs)


def request_sync(app, method: str, url: str, **kwargs) -> httpx.Response:
    return asyncio.run(call(app, method, url, **kwargs))


def assert_clean(response: httpx.Response) -> None:
    """No traceback, no topic name, no storage key in an error body."""
    text = response.text
    assert "Traceback" not in text and "videos/" not in text
    assert not any(t.name in text for t in ALL_TOPICS), text


def test_hot_sku_served_with_every_field(world, engine):  # noqa: F811
    [request] = plans(engine, product("SKU-H", hot=True))
    world["index"].apply_planned(planned(request, dispatched=True), 0, 0)
    world["index"].apply_ready(ready(request))
    response = request_sync(world["app"], "GET", "/v1/skus/SKU-H/video?user=u-1&channel=app&region=zh-CN")
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "sku": "SKU-H", "variant_id": "daily-a", "video_url": ready(request).video_url,
        "poster_url": ready(request).poster_url, "feed_video_url": None, "request_key": request.request_key,
        "promo_id": None, "valid_until": None, "experiment_id": None, "ai_generated": True,
    }


def test_first_view_of_a_long_tail_sku_sends_its_planned_request_once(world, engine):  # noqa: F811
    kafka, index, app = world["kafka"], world["index"], world["app"]
    [request] = plans(engine, product("SKU-L"))
    kafka.plans[(2, 5)] = planned(request, dispatched=False)
    index.apply_planned(kafka.plans[(2, 5)], 2, 5)

    async def two_views():
        first = await call(app, "GET", "/v1/skus/SKU-L/video")
        await asyncio.sleep(0.05)  # the background send
        second = await call(app, "GET", "/v1/skus/SKU-L/video")
        await world["service"].drain()
        return first, second

    first, second = asyncio.run(two_views())
    assert (first.status_code, first.json()["status"], first.json()["reason"]) == (404, "pending",
                                                                                   "render_on_first_view")
    assert (second.json()["status"], second.json()["reason"]) == ("pending", "render_queued")
    assert len(kafka.sent) == 1
    topic, key, sent = kafka.sent[0]
    assert (topic, key) == (VIDEO_REQUESTED_ONDEMAND.name, b"SKU-L")
    assert sent.model_dump_json() == request.model_dump_json()  # byte for byte what the planner recorded
    index.apply_ready(ready(request))
    assert request_sync(app, "GET", "/v1/skus/SKU-L/video").status_code == 200
    assert len(kafka.sent) == 1


def test_a_failed_first_view_send_is_retried_by_a_later_view(world, engine):  # noqa: F811
    kafka, index, app = world["kafka"], world["index"], world["app"]
    [request] = plans(engine, product("SKU-L3"))
    kafka.plans[(0, 0)] = planned(request, dispatched=False)
    index.apply_planned(kafka.plans[(0, 0)], 0, 0)
    kafka.fail_sends = True

    async def view():
        response = await call(app, "GET", "/v1/skus/SKU-L3/video")
        await world["service"].drain()
        return response

    assert asyncio.run(view()).json()["reason"] == "render_on_first_view"
    kafka.fail_sends = False
    assert asyncio.run(view()).json()["reason"] == "render_on_first_view"
    assert len(kafka.sent) == 1


def test_rate_limit_per_sku_for_new_plans(world, engine):  # noqa: F811
    kafka, index, app, clock = world["kafka"], world["index"], world["app"], world["clock"]
    first_plan = plans(engine, product("SKU-L4"))[0]
    newer = plans(engine, product("SKU-L4", image_url="file:tests/data/images/SKU-1001.png"))[0]

    async def view():
        response = await call(app, "GET", "/v1/skus/SKU-L4/video")
        await world["service"].drain()
        return response

    for offset, request in enumerate((first_plan, newer)):
        kafka.plans[(0, offset)] = planned(request, dispatched=False)
    index.apply_planned(kafka.plans[(0, 0)], 0, 0)
    asyncio.run(view())
    index.apply_planned(kafka.plans[(0, 1)], 0, 1)  # the product changed right after
    asyncio.run(view())
    assert [e.request_key for _, _, e in kafka.sent] == [first_plan.request_key]  # within the interval
    clock["mono"] += 61
    asyncio.run(view())
    assert [e.request_key for _, _, e in kafka.sent] == [first_plan.request_key, newer.request_key]


def test_lookup_misses_and_bad_input(world, engine):  # noqa: F811
    index, app = world["index"], world["app"]
    [request] = plans(engine, product("SKU-F"))
    index.apply_planned(planned(request, dispatched=True), 0, 0)
    index.apply_failed(failed(request, Reason.QUALITY_GATE))
    cases = {
        "/v1/skus/SKU-F/video": (404, {"status": "refused", "reason": "quality_gate"}),
        "/v1/skus/SKU-NONE/video": (404, {"status": "unknown", "reason": "unknown_sku"}),
        "/v1/skus/-bad/video": (422, {"reason": "schema_violation", "field": "sku"}),
        f"/v1/skus/{'x' * 65}/video": (422, {"reason": "schema_violation", "field": "sku"}),
        f"/v1/skus/SKU-F/video?user={'u' * 129}": (422, {"reason": "schema_violation", "field": "user"}),
        "/v1/skus/SKU-F/video?region=..": (422, {"reason": "schema_violation", "field": "region"}),
        "/v1/nothing": (404, {"reason": "not_found"}),
        "/v1/videos/not-an-id": (422, {"reason": "schema_violation", "field": "video_id"}),
        "/v1/videos/0123456789abcdef01234567": (404, {"reason": "unknown_video"}),
        "/v1/promos/P-NONE": (404, {"reason": "unknown_promo"}),
    }
    for url, (status, subset) in cases.items():
        response = request_sync(app, "GET", url)
        assert response.status_code == status, (url, response.text)
        assert subset.items() <= response.json().items(), (url, response.json())
        assert_clean(response)
    response = request_sync(app, "DELETE", "/v1/skus/SKU-F/video")
    assert (response.status_code, response.json()["reason"]) == (405, "method_not_allowed")


def test_post_is_idempotent_and_refuses_what_the_gate_refuses(world):
    kafka, index, app = world["kafka"], world["index"], world["app"]
    headers = {"Idempotency-Key": "order-42"}
    first = request_sync(app, "POST", "/v1/videos", json=BODY, headers=headers)
    assert first.status_code == 202, first.text
    vid = first.json()["id"]
    assert first.json()["status_url"] == f"/v1/videos/{vid}" == first.headers["location"]
    again = request_sync(app, "POST", "/v1/videos", json=BODY, headers=headers)
    assert (again.status_code, again.json()["id"]) == (202, vid)
    assert len(kafka.sent) == 1
    topic, key, request = kafka.sent[0]
    assert (topic, key, request.params.height, request.prompt.positive) == (
        VIDEO_REQUESTED_ONDEMAND.name, vid.encode(), 224, BODY["prompt"])
    other = request_sync(app, "POST", "/v1/videos", json=BODY | {"duration": 3}, headers=headers)
    assert (other.status_code, other.json()["reason"]) == (409, "idempotency_key_reused")
    status = request_sync(app, "GET", f"/v1/videos/{vid}")
    assert status.json() == {"id": vid, "status": "queued"}
    kafka.offsets = {1: 0}
    assert request_sync(app, "GET", f"/v1/videos/{vid}").json()["status"] == "rendering"
    index.apply_ready(ready(request))
    done = request_sync(app, "GET", f"/v1/videos/{vid}").json()
    assert done["status"] == "ready" and done["video_url"].endswith(".mp4")
    unsafe = request_sync(app, "POST", "/v1/videos", json=BODY | {"prompt": "枪支 弹药 特价"},
                          headers={"Idempotency-Key": "k2"})
    assert unsafe.status_code == 422
    assert unsafe.json() | {"message": ""} == {"reason": "unsafe_content", "message": "", "field": "prompt",
                                               "rule": "weapons:枪支"}
    assert len(kafka.sent) == 1


def test_post_bad_input_gets_machine_readable_4xx(world):
    app = world["app"]
    key = {"Idempotency-Key": "k"}
    cases = [
        ({"json": BODY}, 400, "idempotency_key_required"),
        ({"json": BODY, "headers": {"Idempotency-Key": "bad key!"}}, 400, "invalid_idempotency_key"),
        ({"content": b"{not json", "headers": key | {"content-type": "application/json"}}, 400, "invalid_json"),
        ({"json": BODY | {"resolution": "1080p"}, "headers": key}, 422, "schema_violation"),
        ({"json": BODY | {"duration": 60}, "headers": key}, 422, "schema_violation"),
        ({"json": BODY | {"surprise": 1}, "headers": key}, 422, "schema_violation"),
        ({"json": BODY | {"image_url": "file:///etc/passwd"}, "headers": key}, 422, "schema_violation"),
        ({"json": BODY | {"prompt": " \u200b "}, "headers": key}, 422, "empty_content"),
        ({"json": BODY | {"prompt": "x" * 2500}, "headers": key}, 422, "schema_violation"),
        ({"content": b"{" + b" " * 5000 + b"}", "headers": key | {"content-type": "application/json"}}, 413,
         "body_too_large"),
    ]
    for kwargs, status, reason in cases:
        response = request_sync(app, "POST", "/v1/videos", **kwargs)
        assert (response.status_code, response.json()["reason"]) == (status, reason), (kwargs, response.text)
        assert_clean(response)
    assert world["kafka"].sent == []


def test_chunked_body_over_the_limit_is_refused_without_reading_it_all(world):
    chunks_read = []

    async def body():
        for n in range(100):
            chunks_read.append(n)
            yield b" " * 1024

    response = request_sync(world["app"], "POST", "/v1/videos", content=body(),
                            headers={"Idempotency-Key": "k", "content-type": "application/json"})
    assert (response.status_code, response.json()["reason"]) == (413, "body_too_large")
    assert len(chunks_read) < 10


def test_queue_down_is_503_and_a_retry_with_the_same_key_works(world):
    kafka, app = world["kafka"], world["app"]
    kafka.fail_sends = True
    down = request_sync(app, "POST", "/v1/videos", json=BODY, headers={"Idempotency-Key": "k3"})
    assert (down.status_code, down.json()["reason"]) == (503, "queue_unavailable")
    assert_clean(down)
    kafka.fail_sends = False
    assert request_sync(app, "POST", "/v1/videos", json=BODY, headers={"Idempotency-Key": "k3"}).status_code == 202


def test_not_ready_until_the_index_caught_up(world):
    world["ready"]["ready"] = False
    app = world["app"]
    assert request_sync(app, "GET", "/readyz").status_code == 503
    response = request_sync(app, "GET", "/v1/skus/SKU-1/video")
    assert (response.status_code, response.json()["reason"]) == (503, "index_loading")
    world["ready"]["ready"] = True
    assert request_sync(app, "GET", "/readyz").status_code == 200
    assert request_sync(app, "GET", "/healthz").json() == {"status": "ok"}


def test_openapi_document_is_served_and_checked_in(world):
    served = request_sync(world["app"], "GET", "/openapi.json").json()
    assert served == document()
    assert (OUT_DIR / "openapi.json").read_bytes() == rendered(), "run `make schemas` and commit schemas/generated"
    assert set(served["paths"]) == {"/v1/skus/{sku}/video", "/v1/videos", "/v1/videos/{video_id}",
                                    "/v1/promos/{promo_id}", "/v1/experiments/{experiment_id}"}
    text = orjson.dumps(served).decode()
    assert not any(t.name in text for t in ALL_TOPICS)
