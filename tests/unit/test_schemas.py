"""Contract files match the models; the codec turns every defect into the right reason code."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest

from consumers.dead_letter import dead_letter
from schemas.codec import DecodeError, ce_headers, decode, encode_value, record_key
from schemas.events import ProductCreated, Reason
from schemas.export import OUT_DIR, rendered
from schemas.topics import ALL_TOPICS, PRODUCT_CREATED

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
        (orjson.dumps(product_dict(surprise=1)), Reason.SCHEMA_VIOLATION),
        (orjson.dumps(product_dict(occurred_at="2025-11-01T09:00:00")), Reason.SCHEMA_VIOLATION),
        (orjson.dumps(product_dict(title="x" * 2_000_000)), Reason.OVERSIZED_PAYLOAD),
    ],
    ids=["malformed", "tombstone", "not-object", "wrong-type", "missing-sku", "unknown-field", "naive-time",
         "oversized"],
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
    assert len(base64.b64decode(record.value_b64)) == 1_048_576
