"""Read ``video.reviewed`` from Kafka for the report and the export: every partition, from the first record at
or after ``since`` (``offsets_for_times``) to the end offsets seen at the start; no consumer group."""

from __future__ import annotations

import logging
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.codec import DecodeError, decode
from schemas.events import VideoReviewed
from schemas.topics import VIDEO_REVIEWED
from skuvid.kafka_clients import aiokafka_options
from skuvid.settings import Settings

log = logging.getLogger(__name__)


async def read_reviewed(settings: Settings, since: datetime | None = None) -> list[VideoReviewed]:
    """Verdicts in log order (per partition); records that do not decode are skipped with a warning."""
    consumer = AIOKafkaConsumer(**aiokafka_options(settings), client_id=f"{settings.kafka_client_id}-review-read",
                                group_id=None, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = [TopicPartition(VIDEO_REVIEWED.name, p) for p in range(VIDEO_REVIEWED.partitions)]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        starts = {}
        if since is not None:
            found = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in partitions})
            starts = {tp: (meta.offset if meta is not None else ends[tp]) for tp, meta in found.items()}
        for tp in partitions:
            if tp in starts:
                consumer.seek(tp, starts[tp])
            else:
                await consumer.seek_to_beginning(tp)
        events: list[VideoReviewed] = []
        while any([await consumer.position(tp) < ends[tp] for tp in partitions]):
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    if record.offset >= ends[TopicPartition(record.topic, record.partition)]:
                        continue
                    try:
                        event = decode(VIDEO_REVIEWED, record.value, max_bytes=settings.max_payload_bytes)
                    except DecodeError as exc:
                        log.warning("skipping %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)
                        continue
                    assert isinstance(event, VideoReviewed)
                    events.append(event)
        return events
    finally:
        await consumer.stop()
