"""Engagement events are tolerant readers with strict known fields; experiment declarations refuse nonsense."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from schemas.codec import DecodeError, decode
from schemas.engagement import EngagementEvent, Experiment, ExperimentCatalog, engagement_key
from schemas.events import Reason
from schemas.export import rendered
from schemas.topics import BY_NAME, ENGAGEMENT, INPUT_TOPICS

REPO = Path(__file__).parents[2]
EVENT = {
    "event_id": "evt-1", "occurred_at": "2026-12-01T10:00:00+08:00", "kind": "page_view",
    "experiment_id": "exp-video-atc", "arm": "video", "variant_id": "daily-a", "user_id": "u-1", "sku": "SKU-1",
    "category": "3c", "channel": "app", "region": "CN-31", "pre_period": {"dwell_s": 12.5, "add_to_cart": 1},
}


def test_engagement_is_a_consumed_topic_with_a_contract_file():
    assert BY_NAME["engagement"] is ENGAGEMENT and ENGAGEMENT in INPUT_TOPICS
    schema = orjson.loads(rendered()["engagement.schema.json"])
    assert {"kind", "experiment_id", "arm", "user_id", "sku", "category", "channel", "region"} <= set(
        schema["required"])


def test_unknown_fields_are_ignored_known_ones_checked():
    event = decode(ENGAGEMENT, orjson.dumps(EVENT | {"ab_bucket": 17, "pre_period": {"dwell_s": 1, "new": 2}}))
    assert isinstance(event, EngagementEvent)
    assert not hasattr(event, "ab_bucket")
    assert engagement_key(event) == b"u-1"
    with pytest.raises(DecodeError) as info:
        decode(ENGAGEMENT, orjson.dumps(EVENT | {"kind": "wishlist"}))
    assert info.value.reason is Reason.SCHEMA_VIOLATION
    with pytest.raises(DecodeError, match="dwell_s"):
        decode(ENGAGEMENT, orjson.dumps(EVENT | {"kind": "dwell"}))
    with pytest.raises(DecodeError, match="watch_time_s"):
        decode(ENGAGEMENT, orjson.dumps(EVENT | {"kind": "video_play"}))
    with pytest.raises(DecodeError):
        decode(ENGAGEMENT, orjson.dumps(EVENT | {"kind": "dwell", "dwell_s": -1}))


def declaration(**overrides) -> dict:
    return {
        "experiment_id": "e", "starts_at": "2026-12-01T00:00:00Z", "ends_at": "2026-12-15T00:00:00Z",
        "arms": [{"arm_id": "control", "variant_id": "none", "weight": 0.5},
                 {"arm_id": "video", "variant_id": "daily-a", "weight": 0.5}],
    } | overrides


def arms(*specs: tuple[str, str, float]) -> list[dict]:
    return [{"arm_id": a, "variant_id": v, "weight": w} for a, v, w in specs]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"arms": arms(("a", "x", 0.5), ("b", "y", 0.5))}, "exactly one arm"),
    ({"arms": arms(("a", "none", 0.6), ("b", "y", 0.6))}, "sum to"),
    ({"arms": arms(("a", "none", 0.5), ("a", "y", 0.5))}, "unique"),
    ({"ends_at": "2026-11-01T00:00:00Z"}, "after"),
    ({"surprise": True}, "Extra inputs"),
])
def test_bad_declarations_say_why(overrides, message):
    with pytest.raises(ValidationError, match=message):
        Experiment.model_validate(declaration(**overrides))


def test_the_checked_in_declarations_parse():
    catalog = ExperimentCatalog.model_validate_json((REPO / "deploy/experiments/experiments.json").read_bytes())
    exp = catalog.get("exp-video-atc")
    assert exp.control.arm_id == "control" and [a.arm_id for a in exp.treatments] == ["video"]
    assert exp.in_scope("SKU-9", "3c") and not exp.in_scope("SKU-9", "toys")
    with pytest.raises(KeyError, match="declared: exp-video-atc"):
        catalog.get("nope")
