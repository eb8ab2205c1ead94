"""The listing API end to end on real Apache Kafka: a planner, a renderer (tiny model) and two API replicas as
real ``skuvid serve`` processes, the API over real HTTP (uvicorn on free 127.0.0.1 ports).

In order, sharing the processes: a hot product is served after its render; a promo's variant is served inside
its window (its status lists the unknown SKU it names); a long-tail product answers pending on its first view,
is rendered once, then served; an on-demand POST sent twice with one Idempotency-Key renders once; after the
promo's end the daily video is served again with no render. Every answer is compared across both replicas.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.codec import decode
from schemas.topics import (
    BY_NAME,
    PRODUCT_CREATED,
    PROMO_STARTED,
    REQUEST_TOPICS,
    VIDEO_READY,
    VIDEO_REQUESTED_ONDEMAND,
)
from skuvid.brokers import free_port
from tests.integration.harness import DATA, Service, produce_raw, run, service_settings

pytestmark = [pytest.mark.kafka]

TAG = uuid.uuid4().hex[:6]
HOT, TAIL, UNKNOWN, PROMO = f"SKU-AH{TAG}", f"SKU-AT{TAG}", f"SKU-AU{TAG}", f"P-A{TAG}"
PROMO_WINDOW_S = 60  # long enough for two renders on a busy 2-core machine; the other tests run inside it
BODY = {"prompt": "a ceramic mug on a wooden desk, soft morning light", "duration": 2, "resolution": "240p"}


@pytest.fixture(scope="module")
def stack(kafka_broker, tmp_path_factory):
    work: Path = tmp_path_factory.mktemp("api")
    # 17 frames instead of 49 and no CLIP: a third of the render time, so the module fits in ~2 minutes.
    settings = service_settings(kafka_broker.bootstrap, work, render_policy="auto", api_host="127.0.0.1",
                                api_enqueue_interval_s=600, fps=8, clip_model=None)
    planner, renderer = Service("planner", settings, work), Service("renderer", settings, work)
    ports = [free_port(), free_port()]
    apis = [Service("api", settings.model_copy(update={"api_port": port}), work) for port in ports]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    state = {"settings": settings, "urls": urls, "apis": apis}
    try:
        for api, url in zip(apis, urls, strict=True):
            wait_for(lambda url=url: get(url, "/readyz").status_code == 200, 90, api)
        yield state
    finally:
        codes = [service.stop() for service in (*apis, renderer, planner)]
    assert codes[:2] == [0, 0], [api.log()[-2000:] for api in apis]


def get(base: str, path: str) -> httpx.Response:
    try:
        return httpx.get(base + path, timeout=10)
    except httpx.TransportError:
        return httpx.Response(599)


def agreed(stack, path: str, **expected) -> dict | None:
    """The answer both replicas give to ``path`` (``http``: the status code, then the body) when they give the
    same one and it has every ``expected`` item; None otherwise (a replica still catching up): poll it."""
    a, b = (get(url, path) for url in stack["urls"])
    if (a.status_code, a.text) != (b.status_code, b.text) or a.status_code == 599:
        return None
    answer = {"http": a.status_code, **a.json()}
    return answer if all(answer.get(k) == v for k, v in expected.items()) else None


def wait_for(condition, timeout_s: float, *services: Service, every_s: float = 0.3):
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        for service in services:
            assert service.alive(), f"{service.role} exited:\n{service.log()[-3000:]}"
        assert time.monotonic() < deadline, f"not within {timeout_s} s: " + "".join(
            s.log()[-2000:] for s in services)
        time.sleep(every_s)


def read_all(bootstrap: str, topics: list[str]) -> list:
    """Every record now in ``topics`` (decoded), from the beginning to the current end."""

    async def read():
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = [TopicPartition(t, p) for t in topics for p in range(BY_NAME[t].partitions)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            seen = []
            while any([await consumer.position(tp) < ends[tp] for tp in partitions]):
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    seen += [decode(r.topic, r.value, max_bytes=16 << 20) for r in records]
            return seen
        finally:
            await consumer.stop()

    return run(read())


def produce_products(bootstrap: str) -> None:
    base = orjson.loads(DATA.joinpath("catalog.jsonl").read_bytes().splitlines()[1])
    events = [base | {"sku": sku, "hot": hot, "event_id": f"evt-{sku}"} for sku, hot in ((HOT, True), (TAIL, False))]
    run(produce_raw(bootstrap, PRODUCT_CREATED.name, [orjson.dumps(e) for e in events], [HOT.encode(), TAIL.encode()]))


def produce_promo(stack) -> None:
    """The promo over the hot SKU and one the catalog does not know, in its window from now on."""
    now = datetime.now(UTC)
    ends = now + timedelta(seconds=PROMO_WINDOW_S)
    promo = orjson.loads(DATA.joinpath("promo.jsonl").read_bytes().splitlines()[0]) | {
        "event_id": f"evt-{PROMO}", "promo_id": PROMO, "skus": [HOT, UNKNOWN], "categories": [],
        "starts_at": (now - timedelta(seconds=5)).isoformat(), "ends_at": ends.isoformat(),
    }
    run(produce_raw(stack["settings"].kafka_bootstrap, PROMO_STARTED.name, [orjson.dumps(promo)], [PROMO.encode()]))
    stack["promo_ends"] = ends


def test_hot_product_is_served_after_its_render(stack):
    produce_products(stack["settings"].kafka_bootstrap)
    # Once the planner has planned the hot SKU, the promo: its variant renders right after the daily one.
    wait_for(lambda: agreed(stack, f"/v1/skus/{HOT}/video", status="pending"), 60, *stack["apis"])
    produce_promo(stack)
    answers = []

    def served() -> bool:
        answer = agreed(stack, f"/v1/skus/{HOT}/video?user=u-1")
        answers.extend([answer] if answer else [])
        return bool(answer) and answer["http"] == 200

    wait_for(served, 120, *stack["apis"])
    video = answers[-1]
    assert (video["sku"], video["variant_id"], video["promo_id"], video["ai_generated"]) == (HOT, "daily-a", None, True)
    assert Path(video["video_url"].removeprefix("file://")).stat().st_size > 0
    misses = {(a["status"], a["reason"]) for a in answers if a["http"] == 404}
    assert misses <= {("unknown", "unknown_sku"), ("pending", "render_queued")}, misses  # never sent by a view
    stack["daily_key"] = video["request_key"]


def test_promo_variant_is_served_inside_its_window(stack):
    ends = stack["promo_ends"]
    left = (ends - datetime.now(UTC)).total_seconds()
    video = wait_for(lambda: agreed(stack, f"/v1/skus/{HOT}/video", http=200, promo_id=PROMO),
                     left - 1, *stack["apis"])
    assert video["variant_id"] == f"promo-{PROMO}-a" and video["request_key"] != stack["daily_key"]
    assert abs(datetime.fromisoformat(video["valid_until"]) - ends) < timedelta(milliseconds=1)
    status = wait_for(lambda: agreed(stack, f"/v1/promos/{PROMO}", ready=1, unknown_skus=[UNKNOWN]),
                      30, *stack["apis"])
    assert {k: status[k] for k in ("targeted", "planned", "ready", "failed", "unknown_skus", "eta_s")} == {
        "targeted": 2, "planned": 1, "ready": 1, "failed": {"unknown_sku": 1}, "unknown_skus": [UNKNOWN],
        "eta_s": 0.0,
    }
    stack["promo_key"] = video["request_key"]


def test_long_tail_product_is_rendered_on_first_view_once(stack):
    bootstrap = stack["settings"].kafka_bootstrap
    first_url, second_url = stack["urls"]
    path = f"/v1/skus/{TAIL}/video"

    def known() -> dict | None:  # until the replica has read the plan it answers unknown (and sends nothing)
        answer = get(first_url, path).json()
        return answer if answer.get("status") != "unknown" else None

    first = wait_for(known, 60, *stack["apis"])
    assert (first["status"], first["reason"]) == ("pending", "render_on_first_view")
    ondemand = [VIDEO_REQUESTED_ONDEMAND.name]
    wait_for(lambda: any(e.sku == TAIL for e in read_all(bootstrap, ondemand)), 30, *stack["apis"])
    time.sleep(0.5)  # the other replica reads the sent record from the lane
    for url in (first_url, second_url):  # neither sends it again
        again = get(url, path).json()
        assert again.get("reason") != "render_on_first_view", (url, again)
    video = wait_for(lambda: agreed(stack, path, http=200), 120, *stack["apis"])
    assert video["variant_id"] == "daily-a"
    sent = [e for e in read_all(bootstrap, ondemand) if e.sku == TAIL]
    assert len(sent) == 1 and sent[0].request_key == video["request_key"]
    assert not [e for e in read_all(bootstrap, [t.name for t in REQUEST_TOPICS if t is not VIDEO_REQUESTED_ONDEMAND])
                if e.sku == TAIL], "a long-tail product must not be sent before its first view"
    assert [e.request_key for e in read_all(bootstrap, [VIDEO_READY.name]) if e.sku == TAIL] == [sent[0].request_key]


def test_post_twice_with_one_idempotency_key_renders_once(stack):
    bootstrap = stack["settings"].kafka_bootstrap
    first_url, second_url = stack["urls"]
    headers = {"Idempotency-Key": f"it-{TAG}"}
    body = BODY | {"prompt": f"{BODY['prompt']} {TAG}"}
    accepted = httpx.post(first_url + "/v1/videos", json=body, headers=headers, timeout=10)
    assert accepted.status_code == 202, accepted.text
    vid = accepted.json()["id"]
    wait_for(lambda: get(second_url, f"/v1/videos/{vid}").status_code == 200, 20)
    again = httpx.post(second_url + "/v1/videos", json=body, headers=headers, timeout=10)
    assert (again.status_code, again.json()) == (202, accepted.json())
    conflict = httpx.post(second_url + "/v1/videos", json=body | {"duration": 3}, headers=headers, timeout=10)
    assert (conflict.status_code, conflict.json()["reason"]) == (409, "idempotency_key_reused")
    unsafe = httpx.post(first_url + "/v1/videos", json=body | {"prompt": "枪支 弹药"}, timeout=10,
                        headers={"Idempotency-Key": f"unsafe-{TAG}"})
    assert (unsafe.status_code, unsafe.json()["reason"]) == (422, "unsafe_content")
    done = wait_for(lambda: agreed(stack, f"/v1/videos/{vid}", status="ready"), 120, *stack["apis"])
    assert done["video_url"].endswith(".mp4")
    sent = [e for e in read_all(bootstrap, [VIDEO_REQUESTED_ONDEMAND.name]) if e.variant_id == f"ondemand-{vid}"]
    assert len(sent) == 1
    readies = [e for e in read_all(bootstrap, [VIDEO_READY.name]) if e.request_key == sent[0].request_key]
    assert len(readies) == 1


def test_daily_video_again_after_the_promo_ends_without_a_render(stack):
    bootstrap = stack["settings"].kafka_bootstrap
    requests_before = [e for e in read_all(bootstrap, [t.name for t in REQUEST_TOPICS]) if e.sku == HOT]
    left = (stack["promo_ends"] - datetime.now(UTC)).total_seconds()
    assert left < PROMO_WINDOW_S
    time.sleep(max(left, 0) + 0.5)
    video = wait_for(lambda: agreed(stack, f"/v1/skus/{HOT}/video?user=u-1", http=200), 5)
    assert (video["variant_id"], video["promo_id"], video["request_key"]) == ("daily-a", None, stack["daily_key"])
    readies = {e.request_key for e in read_all(bootstrap, [VIDEO_READY.name]) if e.sku == HOT}
    assert readies == {stack["daily_key"], stack["promo_key"]}
    requests = [e for e in read_all(bootstrap, [t.name for t in REQUEST_TOPICS]) if e.sku == HOT]
    assert len(requests) == len(requests_before) == 2
    assert wait_for(lambda: agreed(stack, f"/v1/promos/{PROMO}", ready=1, planned=1), 5)


def test_an_added_replica_rebuilds_the_same_index_from_kafka(stack, tmp_path):
    """A replica started now reads every partition from the beginning and answers as the others do."""
    port = free_port()
    late = Service("api", stack["settings"].model_copy(update={"api_port": port}), tmp_path)
    try:
        wait_for(lambda: get(f"http://127.0.0.1:{port}", "/readyz").status_code == 200, 60, late)
        paths = [f"/v1/skus/{sku}/video?user=u-7" for sku in (HOT, TAIL, UNKNOWN)] + [f"/v1/promos/{PROMO}"]
        for path in paths:
            old, new = get(stack["urls"][0], path), get(f"http://127.0.0.1:{port}", path)
            assert (new.status_code, new.json()) == (old.status_code, old.json()), path
    finally:
        assert late.stop() == 0, late.log()[-2000:]
