"""``skuvid emit TOPIC FILE.jsonl``: validate each line against the topic's schema and publish the valid ones.

Invalid lines are reported with their line number and never sent: a catalog feed with one bad row still
delivers the others, and the operator sees exactly which rows to fix. Each sent record's event id is reported
too, so a promo team can follow its promo. Only the topics other teams produce (``INPUT_TOPICS``) are open
by default: skuvid's own output and internal topics need ``allow_internal`` — otherwise anyone with the CLI
could forge a ``video.ready``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import orjson
from pydantic import BaseModel

from producers.publisher import Publisher
from schemas.codec import DecodeError, decode
from schemas.topics import BY_NAME, INPUT_TOPICS, Topic


@dataclass(frozen=True)
class LineError:
    line: int
    reason: str
    message: str


@dataclass(frozen=True)
class Line:
    """A valid line: its number in the file and its event."""

    number: int
    event: BaseModel


@dataclass
class EmitReport:
    topic: str
    errors: list[LineError] = field(default_factory=list)
    sent_ids: list[tuple[int, str]] = field(default_factory=list)  # (line, event id) of each sent record

    @property
    def sent(self) -> int:
        return len(self.sent_ids)

    def as_dict(self) -> dict:
        return {"topic": self.topic, "sent": self.sent, "event_ids": [event_id for _, event_id in self.sent_ids],
                "errors": [e.__dict__ for e in self.errors]}


def resolve_topic(name: str, *, allow_internal: bool = False) -> Topic:
    """The topic named ``name``; skuvid's own output and internal topics only with ``allow_internal``."""
    if name not in BY_NAME:
        raise ValueError(f"unknown topic {name!r}; known: {', '.join(sorted(BY_NAME))}")
    topic = BY_NAME[name]
    if topic not in INPUT_TOPICS and not allow_internal:
        inputs = ", ".join(t.name for t in INPUT_TOPICS)
        raise ValueError(f"{name!r} is written by skuvid itself; emit sends only {inputs} (--allow-internal to override)")
    return topic


def parse_numbered(topic: Topic, path: Path, max_bytes: int) -> tuple[list[Line], list[LineError]]:
    """Every non-blank line of ``path`` as an event of ``topic`` with its line number, plus the lines that are not."""
    lines, errors = [], []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            lines.append(Line(number, decode(topic, line, max_bytes=max_bytes)))
        except DecodeError as exc:
            errors.append(LineError(number, exc.reason.value, exc.message))
    return lines, errors


def parse_lines(topic: Topic, path: Path, max_bytes: int) -> tuple[list[BaseModel], list[LineError]]:
    """``parse_numbered`` without the line numbers."""
    lines, errors = parse_numbered(topic, path, max_bytes)
    return [line.event for line in lines], errors


async def emit_file(publisher: Publisher, topic: Topic, path: Path, max_bytes: int) -> EmitReport:
    lines, errors = parse_numbered(topic, path, max_bytes)
    return await emit_events(publisher, topic, lines, errors)


async def emit_events(publisher: Publisher, topic: Topic, lines: list[Line], errors: list[LineError]) -> EmitReport:
    report = EmitReport(topic.name, errors=errors)
    for line in lines:
        await publisher.publish(topic, line.event)
        report.sent_ids.append((line.number, str(getattr(line.event, "event_id", ""))))
    return report


def dumps_report(report: EmitReport) -> str:
    return orjson.dumps(report.as_dict()).decode()
