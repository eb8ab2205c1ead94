"""Read one ``video.planned`` record back by its position: the held request a first view sends.

The index keeps, per SKU variant, only where its plan lies (partition, offset), not the request itself
(a 1.5 KB prompt per SKU would be gigabytes for a million-SKU long tail). The topic is compacted, so the
newest record of a slot is never removed; an older position may be, and a read then returns the next
record — the caller compares request keys and treats a mismatch as "superseded".
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.codec import DecodeError, decode
from schemas.events import VideoPlanned
from schemas.topics import VIDEO_PLANNED
from skuvid.kafka_clients import aiokafka_options
from skuvid.settings import Settings

log = logging.getLogger(__name__)


class PlannedReader:
    """One consumer (no group) assigned to every ``video.planned`` partition, all paused: a read seeks one
    partition, resumes it for a single fetch and pauses it again. Reads are serialised."""

    def __init__(self, settings: Settings, timeout_s: float = 5.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            **aiokafka_options(self.settings), client_id=f"{self.settings.kafka_client_id}-api-planned",
            group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1_048_576,
        )
        await consumer.start()
        partitions = [TopicPartition(VIDEO_PLANNED.name, p) for p in range(VIDEO_PLANNED.partitions)]
        consumer.assign(partitions)
        consumer.pause(*partitions)
        self._consumer = consumer

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def read(self, partition: int, offset: int) -> VideoPlanned | None:
        """The plan at ``offset`` (or the next one after it, if compaction removed it); None when nothing
        arrives within the timeout or the record does not decode."""
        assert self._consumer is not None, "start() first"
        consumer = self._consumer
        tp = TopicPartition(VIDEO_PLANNED.name, partition)
        async with self._lock:
            consumer.seek(tp, offset)
            consumer.resume(tp)
            try:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + self.timeout_s
                while (left := deadline - loop.time()) > 0:
                    batch = await consumer.getmany(tp, timeout_ms=int(left * 1000), max_records=1)
                    for record in batch.get(tp, ()):
                        if record.offset < offset:
                            continue
                        try:
                            event = decode(VIDEO_PLANNED, record.value, max_bytes=self.settings.max_payload_bytes)
                        except DecodeError as exc:
                            log.warning("video.planned[%d]@%d does not decode: %s", partition, record.offset, exc)
                            return None
                        assert isinstance(event, VideoPlanned)
                        return event
                return None
            finally:
                consumer.pause(tp)
