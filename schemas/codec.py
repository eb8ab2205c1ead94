"""Bytes on the wire <-> typed events.

Payloads are JSON (orjson); CloudEvents-style headers (binary content mode: ``ce_id``, ``ce_type``,
``ce_source``, ``ce_time``, ``ce_specversion``, ``content-type``) let a router or tracer see what a record is
without parsing it. The record key is the SKU, so every event of one product lands in one partition.
"""

from __future__ import annotations

import functools
from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from schemas.events import Reason
from schemas.topics import BY_NAME, Topic
from skuvid.errors import Outcome, SkuvidError

EventT = TypeVar("EventT", bound=BaseModel)
Headers = list[tuple[str, bytes]]

SOURCE = "urn:skuvid"


class DecodeError(SkuvidError):
    """A record that cannot become its topic's event; ``reason`` says why, for the dead-letter topic."""

    kind = Outcome.DEAD_LETTER

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message, reason=reason)


def encode_value(event: BaseModel) -> bytes:
    return orjson.dumps(event.model_dump(mode="json"))


def record_key(event: BaseModel) -> bytes | None:
    sku = getattr(event, "sku", None)
    if sku:
        return sku.encode()
    promo_id = getattr(event, "promo_id", None)
    return promo_id.encode() if promo_id else None


def ce_headers(topic: Topic, event: BaseModel, source: str = SOURCE) -> Headers:
    event_id = getattr(event, "event_id", None)
    occurred_at = getattr(event, "occurred_at", None)
    headers: Headers = [*_fixed_headers(topic.name, source)]
    if event_id:
        headers.append(("ce_id", str(event_id).encode()))
    if occurred_at:
        headers.append(("ce_time", occurred_at.isoformat().encode()))
    return headers


@functools.lru_cache(maxsize=256)
def _fixed_headers(topic_name: str, source: str) -> tuple[tuple[str, bytes], ...]:
    """The headers every record of one topic from one source carries (a planner writes thousands a second)."""
    return (
        ("ce_specversion", b"1.0"),
        ("ce_type", f"skuvid.{topic_name}.v1".encode()),
        ("ce_source", source.encode()),
        ("content-type", b"application/json"),
    )


def decode(topic: Topic | str, value: bytes | None, *, max_bytes: int = 1_048_576) -> BaseModel:
    """Parse and validate one record value; raise ``DecodeError`` with the reason code on any defect."""
    if isinstance(topic, str):
        if topic not in BY_NAME:
            raise DecodeError(Reason.UNKNOWN_TOPIC, f"no schema for topic {topic!r}")
        topic = BY_NAME[topic]
    if value is None:
        raise DecodeError(Reason.INVALID_JSON, "record has no value (tombstone)")
    if len(value) > max_bytes:
        raise DecodeError(Reason.OVERSIZED_PAYLOAD, f"payload is {len(value)} bytes, limit {max_bytes}")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(Reason.INVALID_JSON, f"not JSON: {exc}") from None
    return _validate_json(topic.model, data, value)


def validate(model: type[EventT], data: object) -> EventT:
    """Validate already-parsed JSON against ``model`` (same strict rules as ``decode``)."""
    return _validate_json(model, data, orjson.dumps(data))


def _validate_json(model: type[EventT], data: object, raw: bytes) -> EventT:
    """Strict JSON validation: no "yes" for a bool, no number for a string; schema errors -> SCHEMA_VIOLATION."""
    if not isinstance(data, dict):
        raise DecodeError(Reason.SCHEMA_VIOLATION, f"expected a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise DecodeError(Reason.SCHEMA_VIOLATION, _summarise(exc)) from None


def _summarise(exc: ValidationError, limit: int = 5) -> str:
    parts = [f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()[:limit]]
    more = exc.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
