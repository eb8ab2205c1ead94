"""``skuvid emit TOPIC FILE.jsonl``: validate each line against the topic's schema and publish the valid ones.

Invalid lines are reported with their line number and never sent: a catalog feed with one bad row still
delivers the others, and the operator sees exactly which rows to fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import orjson
from pydantic import BaseModel

from producers.publisher import Publisher
from schemas.codec import DecodeError, decode
from schemas.topics import BY_NAME, Topic


@dataclass(frozen=True)
class LineError:
    line: int
    reason: str
    message: str


@dataclass
class EmitReport:
    topic: str
    sent: int = 0
    errors: list[LineError] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"topic": self.topic, "sent": self.sent, "errors": [e.__dict__ for e in self.errors]}


def resolve_topic(name: str) -> Topic:
    if name not in BY_NAME:
        raise ValueError(f"unknown topic {name!r}; known: {', '.join(sorted(BY_NAME))}")
    return BY_NAME[name]


def parse_lines(topic: Topic, path: Path, max_bytes: int) -> tuple[list[BaseModel], list[LineError]]:
    """Every non-blank line of ``path`` as an event of ``topic``, plus the lines that are not."""
    events, errors = [], []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append(decode(topic, line, max_bytes=max_bytes))
        except DecodeError as exc:
            errors.append(LineError(number, exc.reason.value, exc.message))
    return events, errors


async def emit_file(publisher: Publisher, topic: Topic, path: Path, max_bytes: int) -> EmitReport:
    events, errors = parse_lines(topic, path, max_bytes)
    return await emit_events(publisher, topic, events, errors)


async def emit_events(publisher: Publisher, topic: Topic, events: list[BaseModel], errors: list[LineError]) -> EmitReport:
    report = EmitReport(topic.name, errors=errors)
    for event in events:
        await publisher.publish(topic, event)
        report.sent += 1
    return report


def dumps_report(report: EmitReport) -> str:
    return orjson.dumps(report.as_dict()).decode()
