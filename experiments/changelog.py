"""The experiment agent's totals, read back from its table's changelog topic — what the report reads in production.

The agent's table ``experiment_state`` is changelog-backed: every change is a record on the compacted topic
``<group>-experiment_state-changelog``, keyed like the table (JSON). The latest record per key *is* the table,
whichever workers own which partitions, so reading the topic from the beginning to the end offsets taken at the
start gives a consistent view of every partition as of that moment: exactly what a restarted agent recovers.
User records are skipped by their key before their value is parsed; only cells are kept.

Cost: the read is linear in the changelog's size (cells plus one record per user once compaction has run).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from experiments.aggregate import Totals

DEFAULT_GROUP = "skuvid-experiments"  # the agent's faust app id and consumer group
TABLE = "experiment_state"
_UNKNOWN_TOPIC = 3  # Kafka protocol error UNKNOWN_TOPIC_OR_PARTITION
_CELL_KEY_PREFIX = orjson.dumps('["t"')[:-1]  # the JSON-encoded table key of a cell starts with this


def changelog_topic(group: str) -> str:
    """faust's name for the changelog of the agent's table (``<app id>-<table>-changelog``)."""
    return f"{group}-{TABLE}-changelog"


async def read_totals(client_options: dict[str, Any], topic: str, timeout_s: float = 60.0) -> Totals:
    """Totals from ``topic`` as of now. ``client_options``: aiokafka connection options (bootstrap, security).

    Raises ``LookupError`` when the topic does not exist (no agent of that group ever ran, or it is being
    created) and ``TimeoutError`` when the end offsets are not reached within ``timeout_s``.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition  # here: `skuvid experiment --help` stays light

    partitions = [TopicPartition(topic, p) for p in await _partitions(client_options, topic)]
    consumer = AIOKafkaConsumer(**client_options, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        latest: dict[str, Any] = {}
        deadline = time.monotonic() + timeout_s
        pending = {tp for tp in partitions if ends[tp] > 0}
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} did not reach its end offsets within {timeout_s:.0f} s")
            batches = await consumer.getmany(*pending, timeout_ms=500, max_records=10_000)
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= ends[tp] or not (record.key or b"").startswith(_CELL_KEY_PREFIX):
                        continue
                    key = orjson.loads(record.key)
                    latest[key] = None if record.value is None else orjson.loads(record.value)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        return Totals.from_state((k, v) for k, v in latest.items() if v is not None)
    finally:
        await consumer.stop()


async def _partitions(client_options: dict[str, Any], topic: str) -> list[int]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**client_options)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = sorted(p["partition"] for p in described["partitions"])
    if described["error_code"] == _UNKNOWN_TOPIC or not partitions:
        raise LookupError(f"no changelog topic {topic!r} (yet): has the experiment agent of this group run?")
    return partitions
