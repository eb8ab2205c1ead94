"""Keep a ``VideoIndex`` current from Kafka: every partition of the index topics, from the beginning.

No consumer group: each replica reads everything and holds a full copy, so any replica answers for any SKU
without routing, and a restarted or added replica rebuilds by reading again (the state lives in Kafka:
``video.planned`` is compacted, the other topics keep their retention). The replica is *ready* once it has
read up to the end offsets it saw at start; until then lookups answer 503 ``index_loading``.

Records that do not decode are counted and skipped (the index is a reader; the producers dead-letter).
Observers of the index (the review queue) add their topics to the ones read; readiness covers them too.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from api.index import VideoIndex
from schemas.codec import DecodeError, decode
from schemas.events import Reason
from schemas.topics import (
    PROMO_STARTED,
    VIDEO_FAILED,
    VIDEO_PLANNED,
    VIDEO_READY,
    VIDEO_REQUESTED_ONDEMAND,
    VIDEO_WITHDRAWN,
    Topic,
)
from skuvid.brokers import BrokerError, ensure_topics
from skuvid.errors import FatalError
from skuvid.kafka_clients import aiokafka_options, bootstrap_list, security_options
from skuvid.settings import Settings

log = logging.getLogger(__name__)

INDEX_TOPICS = (VIDEO_PLANNED, VIDEO_READY, VIDEO_FAILED, VIDEO_REQUESTED_ONDEMAND, PROMO_STARTED, VIDEO_WITHDRAWN)
BATCH = 2000


def ensure_api_topics(settings: Settings) -> None:
    """Create (or verify) the topics the API reads and writes, ``video.planned`` compacted, before reading.
    Raises ``FatalError`` when one exists with another partition count or cannot be created."""
    wanted = {t.name: t.partitions for t in INDEX_TOPICS}
    configs = {VIDEO_PLANNED.name: {"cleanup.policy": "compact"}}
    if settings.review_enabled:
        from review.book import REVIEW_TOPIC_CONFIGS, ReviewBook  # noqa: PLC0415 - only with review on

        wanted |= {t.name: t.partitions for t in ReviewBook.topics}
        configs |= REVIEW_TOPIC_CONFIGS
    try:
        ensure_topics(",".join(bootstrap_list(settings)), wanted, replication=settings.kafka_replication_factor,
                      configs=configs, client_options=security_options(settings))
    except BrokerError as exc:
        raise FatalError(f"the API's topics are not usable: {exc}", reason=Reason.BROKER_UNAVAILABLE) from None


class IndexFeed:
    def __init__(self, settings: Settings, index: VideoIndex) -> None:
        self.settings = settings
        self.index = index
        self.caught_up = asyncio.Event()
        self.applied = 0
        self.skipped = 0

    def is_ready(self) -> bool:
        return self.caught_up.is_set()

    def topics(self) -> tuple[Topic, ...]:
        """The index topics and those of the index's observers, each once."""
        return tuple({t.name: t for t in (*INDEX_TOPICS, *self.index.observed_topics())}.values())

    async def run(self) -> None:
        """Read until cancelled; sets ``caught_up`` once the end offsets seen at start are reached."""
        consumer = AIOKafkaConsumer(
            **aiokafka_options(self.settings), client_id=f"{self.settings.kafka_client_id}-api-index",
            group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1_048_576,
        )
        await consumer.start()
        try:
            partitions = [TopicPartition(t.name, p) for t in self.topics() for p in range(t.partitions)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            targets = await consumer.end_offsets(partitions)
            waiting = set(partitions)
            loop = asyncio.get_running_loop()
            started = loop.time()
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=BATCH)
                for records in batches.values():
                    for record in records:
                        self.apply(record)
                if waiting:
                    waiting = {tp for tp in waiting if await consumer.position(tp) < targets[tp]}
                    if not waiting:
                        self.caught_up.set()
                        log.info("video index ready: %d records, %d SKUs in %.1f s (%d skipped)", self.applied,
                                 len(self.index.skus), loop.time() - started, self.skipped)
                await asyncio.sleep(0)  # let requests in between batches
        finally:
            await consumer.stop()

    def apply(self, record: ConsumerRecord) -> None:
        if record.topic == VIDEO_PLANNED.name and record.value is None:
            if record.key is not None:
                self.index.remove_planned(record.key.decode(errors="replace"))
            return
        try:
            event = decode(record.topic, record.value, max_bytes=self.settings.max_payload_bytes)
        except DecodeError as exc:
            self.skipped += 1
            log.warning("index skips %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc.message)
            return
        self.index.apply(record.topic, event, record.partition, record.offset)
        self.applied += 1
