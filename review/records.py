"""Read single records back by position (topic, partition, offset): the product card of a video under review.

The review book keeps, per SKU, only where its newest product record lies (not the product: a million
catalog entries would be gigabytes on every replica); the card is read when a reviewer opens the video.
Like ``api.planned``: one group-less consumer, every partition assigned and paused; a read seeks one
partition, resumes it for one fetch and pauses it again. Reads are serialised.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import BaseModel

from schemas.codec import DecodeError, decode
from schemas.topics import BY_NAME, Topic
from skuvid.kafka_clients import aiokafka_options
from skuvid.settings import Settings

log = logging.getLogger(__name__)


class RecordReader:
    def __init__(self, settings: Settings, topics: tuple[Topic, ...], timeout_s: float = 5.0) -> None:
        self.settings = settings
        self.topics = topics
        self.timeout_s = timeout_s
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None

    async def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                **aiokafka_options(self.settings), client_id=f"{self.settings.kafka_client_id}-api-review-reader",
                group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                max_partition_fetch_bytes=4 * 1_048_576,
            )
            await consumer.start()
            partitions = [TopicPartition(t.name, p) for t in self.topics for p in range(t.partitions)]
            consumer.assign(partitions)
            consumer.pause(*partitions)
            self._consumer = consumer
        return self._consumer

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def read(self, topic: str, partition: int, offset: int) -> BaseModel | None:
        """The event at ``offset`` of ``topic``/``partition``; None when it is gone (retention), nothing arrives
        within the timeout, or it does not decode."""
        async with self._lock:
            consumer = await self._started()
            tp = TopicPartition(topic, partition)
            consumer.seek(tp, offset)
            consumer.resume(tp)
            try:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + self.timeout_s
                while (left := deadline - loop.time()) > 0:
                    batch = await consumer.getmany(tp, timeout_ms=int(left * 1000), max_records=1)
                    for record in batch.get(tp, ()):
                        if record.offset != offset:  # retention removed it: the next one is another product
                            return None
                        try:
                            return decode(BY_NAME[topic], record.value, max_bytes=self.settings.max_payload_bytes)
                        except DecodeError as exc:
                            log.warning("%s[%d]@%d does not decode: %s", topic, partition, offset, exc.message)
                            return None
                return None
            finally:
                consumer.pause(tp)
