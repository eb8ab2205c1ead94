"""The render policy in the planner (``PlannerFlow`` over dicts, no broker): what is sent at once, what is only
recorded on ``video.planned`` for the listing's first view."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from consumers.planner import PlannerFlow, PromoTarget
from consumers.planning import Planner
from schemas.events import VideoPlanned, VideoRequested
from schemas.topics import VIDEO_PLANNED, VIDEO_REQUESTED, VIDEO_REQUESTED_HOT
from skuvid.metrics import Metrics
from skuvid.settings import Settings
from tests.unit.test_api_index import T0, engine, product, promo  # noqa: F401 - fixture


def flow(engine, policy: str):  # noqa: F811
    sent: list[tuple[str, object, bytes | None]] = []

    async def send(topic, event, key=None):
        sent.append((topic.name, event, key))

    planner = Planner(engine, Settings(model="tiny"))
    return PlannerFlow(planner, engine, {}, {}, send, Metrics(), render_policy=policy), sent


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize(("policy", "hot", "sent_to"), [
    ("eager", False, VIDEO_REQUESTED.name), ("eager", True, VIDEO_REQUESTED_HOT.name),
    ("lazy", True, None), ("lazy", False, None),
    ("auto", True, VIDEO_REQUESTED_HOT.name), ("auto", False, None),
])
def test_policy_decides_what_is_sent_and_everything_is_recorded(engine, policy, hot, sent_to):  # noqa: F811
    planner_flow, sent = flow(engine, policy)
    run(planner_flow.on_product(product("SKU-X", hot=hot)))
    requests = [e for t, e, _ in sent if t != VIDEO_PLANNED.name]
    plans = [(e, k) for t, e, k in sent if t == VIDEO_PLANNED.name]
    assert [t for t, e, _ in sent if t != VIDEO_PLANNED.name] == ([sent_to] if sent_to else [])
    [(record, key)] = plans
    assert isinstance(record, VideoPlanned) and record.dispatched is (sent_to is not None)
    assert key == b"SKU-X|daily-a" and record.slot() == "SKU-X|daily-a"
    if requests:
        assert isinstance(requests[0], VideoRequested) and requests[0] == record.request
    assert planner_flow.planned == {"SKU-X|daily-a": record.request.request_key}


def test_resent_product_records_nothing_new(engine):  # noqa: F811
    planner_flow, sent = flow(engine, "auto")
    run(planner_flow.on_product(product("SKU-Y")))
    run(planner_flow.on_product(product("SKU-Y")))
    assert len(sent) == 1


def test_auto_renders_promos_at_once_even_for_the_long_tail(engine):  # noqa: F811
    planner_flow, sent = flow(engine, "auto")
    run(planner_flow.on_product(product("SKU-Z")))
    window = promo("P-Z", ["SKU-Z"], T0, T0 + timedelta(hours=1))
    run(planner_flow.on_promo_target(PromoTarget(promo=window, sku="SKU-Z")))
    topics = [t for t, _, _ in sent]
    assert topics == [VIDEO_PLANNED.name, VIDEO_REQUESTED_HOT.name, VIDEO_PLANNED.name]
    assert sent[-1][2] == b"SKU-Z|promo-P-Z-a" and sent[-1][1].dispatched
