from pathlib import Path

import orjson
import pytest

from consumers.planning import Planner, request_key
from inference.prompt import PromptEngine
from producers.emit import parse_lines
from schemas.events import Lane, Reason
from schemas.topics import PRODUCT_CREATED, PROMO_STARTED
from skuvid.settings import Settings

DATA = Path(__file__).parents[1] / "data"


@pytest.fixture(scope="module")
def engine():
    return PromptEngine.load()


def settings(**overrides) -> Settings:
    return Settings(**({"model": "tiny", "resolution": "240p", "duration_s": 2.0, "steps": 2} | overrides))


def products():
    return {e.sku: e for e in parse_lines(PRODUCT_CREATED, DATA / "catalog.jsonl", 1 << 20)[0]}


def test_same_product_same_request_key_and_seed(engine):
    event = products()["SKU-1002"]
    first = Planner(engine, settings()).plan(event.snapshot(), source_event_id="a").requests
    again = Planner(engine, settings()).plan(event.snapshot(), source_event_id="b").requests
    assert [r.request_key for r in first] == [r.request_key for r in again]
    assert first[0].params.seed == again[0].params.seed
    assert first[0].lane is Lane.BULK


def test_everything_that_changes_the_video_changes_the_key(engine):
    event = products()["SKU-1002"]
    base = Planner(engine, settings()).plan(event.snapshot(), source_event_id="a").requests[0]
    for changed in (settings(model="other/model"), settings(steps=3), settings(resolution="480p")):
        assert Planner(engine, changed).plan(event.snapshot(), source_event_id="a").requests[0].request_key \
            != base.request_key
    retitled = event.snapshot().model_copy(update={"title": "Wireless Power Bank 20000mAh"})
    assert Planner(engine, settings()).plan(retitled, source_event_id="a").requests[0].request_key != base.request_key
    assert request_key("m", base.prompt, None, base.params) != request_key("m", base.prompt, "file:x.png", base.params)


def test_unsafe_product_is_refused_with_rule(engine):
    event = parse_lines(PRODUCT_CREATED, DATA / "catalog_unsafe.jsonl", 1 << 20)[0][0]
    plan = Planner(engine, settings()).plan(event.snapshot(), source_event_id=event.event_id)
    assert plan.requests == []
    [failed] = plan.failures
    assert failed.reason is Reason.UNSAFE_CONTENT
    assert failed.sku == event.sku and failed.details["rule"]


def test_promo_variant_is_hot_and_carries_the_copy_as_overlay_only(engine):
    promo = parse_lines(PROMO_STARTED, DATA / "promo.jsonl", 1 << 20)[0][0]
    event = products()[promo.skus[0]]
    [request] = Planner(engine, settings()).plan(event.snapshot(), source_event_id=promo.event_id,
                                                 promo=promo).requests
    assert request.lane is Lane.HOT
    assert request.variant_id.startswith("promo-")
    assert [o.text for o in request.prompt.overlays] == [promo.copy_text]
    assert promo.copy_text not in request.prompt.positive


def test_ab_variants_are_distinct_and_deterministic(engine):
    event = products()["SKU-3001"]
    plan = Planner(engine, settings(variants_per_product=3)).plan(event.snapshot(), source_event_id="a")
    assert [r.variant_id for r in plan.requests] == ["daily-a", "daily-b", "daily-c"]
    assert len({r.request_key for r in plan.requests}) == 3
    again = Planner(engine, settings(variants_per_product=3)).plan(event.snapshot(), source_event_id="a")
    assert [r.request_key for r in again.requests] == [r.request_key for r in plan.requests]


def test_bad_promo_style_becomes_a_failure_not_an_exception(engine):
    promo = parse_lines(PROMO_STARTED, DATA / "promo.jsonl", 1 << 20)[0][0]
    odd = promo.model_copy(update={"style": "no-such-style"})
    plan = Planner(engine, settings()).plan(products()[promo.skus[0]].snapshot(), source_event_id="p", promo=odd)
    assert plan.requests == [] and plan.failures[0].reason is Reason.INVALID_PARAMS


def test_sample_catalog_is_json_lines():
    assert all(orjson.loads(line) for line in (DATA / "catalog.jsonl").read_bytes().splitlines())
