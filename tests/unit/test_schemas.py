"""Contract files match the models; the codec turns every defect into the right reason code."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest

from consumers.outcomes import dead_letter
from schemas.codec import DecodeError, ce_headers, decode, encode_value, record_key
from schemas.events import ProductCreated, Reason
from schemas.export import OUT_DIR, rendered
from schemas.topics import ALL_TOPICS, INPUT_TOPICS, PRODUCT_CREATED, PROMO_STARTED, VIDEO_FAILED

CATALOG = Path(__file__).parents[1] / "data" / "catalog.jsonl"


def product_dict(**overrides) -> dict:
    line = CATALOG.read_bytes().splitlines()[0]
    return {**orjson.loads(line), **overrides}


def test_generated_contract_files_match_models():
    expected = rendered()
    on_disk = {p.name: p.read_bytes() for p in OUT_DIR.iterdir()}
    assert on_disk.keys() == expected.keys(), "run `make schemas` and commit schemas/generated"
    for name, content in expected.items():
        assert on_disk[name] == content, f"{name} drifted from the models: run `make schemas`"


def test_asyncapi_lists_every_topic_with_its_partitions():
    doc = orjson.loads(rendered()["asyncapi.json"])
    assert doc["asyncapi"].startswith("3.")
    addresses = {c["address"]: c["bindings"]["kafka"]["partitions"] for c in doc["channels"].values()}
    assert addresses == {t.name: t.partitions for t in ALL_TOPICS}


def test_round_trip_with_cloudevents_headers():
    event = ProductCreated.model_validate(product_dict())
    value = encode_value(event)
    assert decode(PRODUCT_CREATED, value) == event
    headers = dict(ce_headers(PRODUCT_CREATED, event))
    assert headers["ce_id"] == event.event_id.encode()
    assert headers["ce_type"] == b"skuvid.product.created.v1"
    assert record_key(event) == event.sku.encode()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", Reason.INVALID_JSON),
        (None, Reason.INVALID_JSON),
        (b"[1, 2]", Reason.SCHEMA_VIOLATION),
        (orjson.dumps(product_dict(hot="very")), Reason.SCHEMA_VIOLATION),
        (orjson.dumps({k: v for k, v in product_dict().items() if k != "sku"}), Reason.SCHEMA_VIOLATION),
        (orjson.dumps(product_dict(occurred_at="2025-11-01T09:00:00")), Reason.SCHEMA_VIOLATION),
        (orjson.dumps(product_dict(title="x" * 2_000_000)), Reason.OVERSIZED_PAYLOAD),
    ],
    ids=["malformed", "tombstone", "not-object", "wrong-type", "missing-sku", "naive-time", "oversized"],
)
def test_decode_defects_have_reasons(value, reason):
    with pytest.raises(DecodeError) as info:
        decode(PRODUCT_CREATED, value)
    assert info.value.reason is reason
    assert info.value.message


def test_schema_violation_names_the_field():
    with pytest.raises(DecodeError, match=r"hot: "):
        decode(PRODUCT_CREATED, orjson.dumps(product_dict(hot="very")))


def test_unknown_topic():
    with pytest.raises(DecodeError) as info:
        decode("no.such.topic", b"{}")
    assert info.value.reason is Reason.UNKNOWN_TOPIC
    assert "no.such.topic" in info.value.message


def test_dead_letter_keeps_original_bytes_and_position():
    value = b"\xff\x00 not json"
    record = dead_letter(topic="product.created", partition=3, offset=42, key=b"SKU-1", value=value,
                         reason=Reason.INVALID_JSON, message="nope")
    assert base64.b64decode(record.value_b64) == value
    assert (record.topic, record.partition, record.offset, record.value_truncated) == ("product.created", 3, 42, False)


def test_dead_letter_truncates_huge_values():
    record = dead_letter(topic="t", partition=0, offset=0, key=None, value=b"x" * 3_000_000,
                         reason=Reason.OVERSIZED_PAYLOAD, message="big")
    assert record.value_truncated
    assert len(base64.b64decode(record.value_b64)) == 512 * 1024
    assert len(encode_value(record)) < 1_000_000  # fits a broker's default message.max.bytes


def test_input_events_ignore_unknown_fields_top_level_and_nested():
    value = orjson.dumps(product_dict(price=99.0, stock=120, seller={"id": 7, "tags": ["a"]}))
    event = decode(PRODUCT_CREATED, value)
    assert event == decode(PRODUCT_CREATED, orjson.dumps(product_dict()))
    assert "price" not in event.model_dump() and "price" not in event.snapshot().model_dump()


def test_input_events_keep_known_fields_strict_even_next_to_unknown_ones():
    with pytest.raises(DecodeError) as info:
        decode(PRODUCT_CREATED, orjson.dumps(product_dict(price=1, hot="yes")))
    assert info.value.reason is Reason.SCHEMA_VIOLATION


def test_skuvid_own_events_refuse_unknown_fields():
    promo = orjson.loads((CATALOG.parent / "promo.jsonl").read_bytes().splitlines()[0])
    assert decode(PROMO_STARTED, orjson.dumps(promo | {"budget": 5})).promo_id == promo["promo_id"]
    failed = {"event_id": "fail-1", "occurred_at": "2025-11-01T09:00:00+08:00", "reason": "quality_gate",
              "message": "m"}
    decode(VIDEO_FAILED, orjson.dumps(failed))
    with pytest.raises(DecodeError) as info:
        decode(VIDEO_FAILED, orjson.dumps(failed | {"surprise": 1}))
    assert info.value.reason is Reason.SCHEMA_VIOLATION


def test_exported_schemas_say_which_topics_are_tolerant():
    for topic in ALL_TOPICS:
        schema = orjson.loads(rendered()[f"{topic.name}.schema.json"])
        assert schema.get("additionalProperties") is (topic in INPUT_TOPICS), topic.name
