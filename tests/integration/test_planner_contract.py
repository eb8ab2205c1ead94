"""The planner against real Kafka: what a catalog sends beyond skuvid's needs never causes a render, and a
promo that names unknown SKUs says so."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest

from schemas.events import Reason, VideoFailed, VideoRequested
from schemas.topics import PRODUCT_CREATED, PRODUCT_UPDATED, PROMO_STARTED, REQUEST_TOPICS, VIDEO_FAILED
from tests.integration.harness import DATA, Service, produce_raw, read_until, run, service_settings

pytestmark = [pytest.mark.kafka]

BASE = orjson.loads(DATA.joinpath("catalog.jsonl").read_bytes().splitlines()[1])


@pytest.fixture(scope="module")
def planner(kafka_broker, tmp_path_factory):
    work: Path = tmp_path_factory.mktemp("planner-contract")
    settings = service_settings(kafka_broker.bootstrap, work)
    service = Service("planner", settings, work)
    yield settings
    assert service.stop() == 0, service.log()[-3000:]


def product(sku: str, n: int, **changes) -> bytes:
    event = BASE | {"sku": sku, "event_id": f"evt-{sku}-{n}", "occurred_at": f"2025-11-0{n}T09:00:00+08:00"}
    return orjson.dumps(event | changes)


def requests_for(bootstrap: str, sku: str, at_least: int, timeout_s: float) -> list[VideoRequested]:
    def done(events):
        return sum(isinstance(e, VideoRequested) and e.sku == sku for e in events) >= at_least

    events = run(read_until(bootstrap, [t.name for t in REQUEST_TOPICS], done, timeout_s))
    return [e for e in events if isinstance(e, VideoRequested) and e.sku == sku]


def test_updates_of_fields_the_video_does_not_depend_on_render_nothing(planner):
    bootstrap, sku = planner.kafka_bootstrap, f"SKU-T{uuid.uuid4().hex[:8]}"
    run(produce_raw(bootstrap, PRODUCT_CREATED.name, [product(sku, 1, price=99.0, stock=120)], [sku.encode()]))
    [first] = requests_for(bootstrap, sku, 1, timeout_s=90)
    updates = [
        product(sku, 2, price=79.0, stock=3),  # price and stock only
        product(sku, 3, price=79.0, warehouse={"id": "HZ-1", "bins": [1, 2]}, promo_badge="hot"),  # unknown only
    ]
    image_change = product(sku, 4, image_url="file:tests/data/images/SKU-1001.png")
    run(produce_raw(bootstrap, PRODUCT_UPDATED.name, [*updates, image_change], [sku.encode()] * 3))
    requests = requests_for(bootstrap, sku, 2, timeout_s=90)
    assert len(requests) == 2, "only the image change may plan a new video"
    assert requests[0].request_key == first.request_key
    assert requests[1].image_url.endswith("SKU-1001.png") and requests[1].request_key != first.request_key


def test_promo_naming_unknown_skus_fails_them_with_a_reason(planner):
    bootstrap, missing = planner.kafka_bootstrap, f"SKU-X{uuid.uuid4().hex[:8]}"
    promo = orjson.loads(DATA.joinpath("promo.jsonl").read_bytes().splitlines()[0])
    promo |= {"event_id": f"evt-promo-{missing}", "promo_id": f"P-{missing}", "skus": [missing], "categories": []}
    run(produce_raw(bootstrap, PROMO_STARTED.name, [orjson.dumps(promo)], [promo["promo_id"].encode()]))

    def done(events):
        return any(isinstance(e, VideoFailed) and e.sku == missing for e in events)

    [failed] = [e for e in run(read_until(bootstrap, [VIDEO_FAILED.name], done, 90))
                if isinstance(e, VideoFailed) and e.sku == missing]
    assert failed.reason is Reason.UNKNOWN_SKU and failed.details["promo_id"] == promo["promo_id"]
