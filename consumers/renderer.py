"""The renderer service (aiokafka, one per GPU): ``video.requested`` in, ``video.ready``/``video.failed`` out.

Two tasks share a bounded queue. The fetcher polls both request topics and, when ``max_in_flight`` jobs are
waiting, pauses its partitions instead of stopping the poll, so the consumer stays in its group. The worker
takes hot-lane records (hot products, promos) before bulk ones. The worker renders one job
at a time in a thread (the event loop stays free for heartbeats), publishes the outcome, waits for the
broker's acknowledgement, and only then commits that record's offset. A crash anywhere before the commit
means redelivery; the request key makes the redelivered render land on the same storage key, and a stored
manifest lets it republish without rendering again.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError
from aiokafka.structs import OffsetAndMetadata

from consumers.delivery import stored_ready, upload
from consumers.dead_letter import dead_letter
from consumers.lane_queue import LaneQueue
from consumers.planning import failure
from inference.render_job import RenderError, RenderJob
from producers.publisher import Publisher
from schemas.codec import DecodeError, decode
from schemas.events import VideoRequested
from schemas.topics import DEAD_LETTER, REQUEST_TOPICS, VIDEO_FAILED, VIDEO_READY, VIDEO_REQUESTED, VIDEO_REQUESTED_HOT
from skuvid.metrics import Metrics
from skuvid.settings import Settings
from skuvid.storage import ObjectStore

log = logging.getLogger(__name__)


def consumer_config(settings: Settings) -> dict:
    return {
        "bootstrap_servers": settings.kafka_bootstrap,
        "client_id": f"{settings.kafka_client_id}-renderer",
        "group_id": settings.renderer_group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        "max_poll_interval_ms": settings.max_poll_interval_ms,
        "max_partition_fetch_bytes": 4 * 1_048_576,
    }


class _DropRevoked(ConsumerRebalanceListener):
    """On revocation, forget queued records of lost partitions: their new owner will process them."""

    def __init__(self, queue: LaneQueue) -> None:
        self.queue = queue

    async def on_partitions_revoked(self, revoked) -> None:
        self.queue.drop(set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        return None


class RendererService:
    def __init__(self, settings: Settings, job: RenderJob, publisher: Publisher, store: ObjectStore,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.job = job
        self.publisher = publisher
        self.store = store
        self.metrics = metrics
        self.queue = LaneQueue(settings.max_in_flight, hot_topics={VIDEO_REQUESTED_HOT.name})
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        """Consume until ``stop()``; the job in progress finishes and is committed, queued ones are redelivered."""
        consumer = AIOKafkaConsumer(**consumer_config(self.settings))
        consumer.subscribe([t.name for t in REQUEST_TOPICS], listener=_DropRevoked(self.queue))
        await consumer.start()
        try:
            fetcher = asyncio.create_task(self._fetch(consumer), name="fetch")
            worker = asyncio.create_task(self._work(consumer), name="work")
            stopped = asyncio.create_task(self.stopping.wait(), name="stopped")
            await asyncio.wait({fetcher, worker, stopped}, return_when=asyncio.FIRST_COMPLETED)
            self.stopping.set()  # whichever ended first, end the others; the worker finishes its job
            fetcher.cancel()
            results = await asyncio.gather(fetcher, worker, stopped, return_exceptions=True)
        finally:
            await consumer.stop()
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise errors[0]

    def stop(self) -> None:
        self.stopping.set()

    async def _fetch(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            free = self.queue.free()
            self._set_paused(consumer, paused=free == 0)
            batches = await consumer.getmany(timeout_ms=200, max_records=max(free, 1))
            for records in batches.values():
                for record in records:
                    self.queue.put_nowait(record)  # getmany returned at most `free` records
            self.metrics.in_flight.set(self.queue.qsize())

    def _set_paused(self, consumer: AIOKafkaConsumer, *, paused: bool) -> None:
        assigned = consumer.assignment()
        if paused:
            consumer.pause(*assigned)
        else:
            consumer.resume(*consumer.paused())
        self.metrics.paused.set(1 if paused and assigned else 0)

    async def _work(self, consumer: AIOKafkaConsumer) -> None:
        while not self.stopping.is_set():
            record = await self.queue.get(timeout_s=0.5)
            if record is not None:
                await self._handle_and_commit(consumer, record)

    async def _handle_and_commit(self, consumer: AIOKafkaConsumer, record: ConsumerRecord) -> None:
        await self.handle(record)
        tp = TopicPartition(record.topic, record.partition)
        try:
            await consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "")})
        except (CommitFailedError, IllegalStateError) as exc:
            # The partition moved during the job: its new owner gets the record again and, finding the
            # stored manifest, republishes the same video without rendering it.
            log.warning("commit of %s@%d skipped: %s", tp, record.offset, exc)
        self.metrics.in_flight.set(self.queue.qsize())

    async def handle(self, record: ConsumerRecord) -> None:
        """Process one record to a durable outcome: video.ready, video.failed or a dead letter."""
        self.metrics.events_consumed.labels(record.topic).inc()
        try:
            request = decode(VIDEO_REQUESTED, record.value, max_bytes=self.settings.max_payload_bytes)
        except DecodeError as exc:
            self.metrics.dead_letters.labels(exc.reason.value).inc()
            await self.publisher.publish(DEAD_LETTER, dead_letter(
                topic=record.topic, partition=record.partition, offset=record.offset,
                key=record.key, value=record.value, reason=exc.reason, message=exc.message,
            ))
            return
        assert isinstance(request, VideoRequested)
        await self.render(request)

    async def render(self, request: VideoRequested) -> None:
        prefix = self.settings.s3_prefix
        earlier = await stored_ready(self.store, request, prefix)
        if earlier is not None:
            self.metrics.renders.labels("reused").inc()
            await self.publisher.publish(VIDEO_READY, earlier)
            return
        started = time.perf_counter()
        log.info("render start %s %s", request.sku, request.request_key)
        with tempfile.TemporaryDirectory(prefix="skuvid-render-") as tmp:
            try:
                rendered = await asyncio.to_thread(self.job.render, request, Path(tmp))
            except RenderError as exc:
                await self._fail(request, exc, **exc.details)
                return
            except Exception as exc:  # noqa: BLE001 - a reasoned failure (GenerationError …) or a bug: never a crash loop
                log.exception("render of %s failed", request.request_key)
                await self._fail(request, exc)
                return
            ready = await upload(self.store, request, rendered, prefix=prefix,
                                 content_producer=self.settings.label_content_producer)
        self.metrics.render_seconds.observe(time.perf_counter() - started)
        self.metrics.quality_attempts.observe(ready.quality.attempts)
        self.metrics.video_bytes.observe(ready.bytes)
        self.metrics.renders.labels("ready").inc()
        await self.publisher.publish(VIDEO_READY, ready)
        log.info("published %s %s %s", request.sku, request.request_key, ready.video_url)

    async def _fail(self, request: VideoRequested, exc: Exception, **details) -> None:
        event = failure(exc, request.sku, request.source_event_id, variant_id=request.variant_id, **details)
        event = event.model_copy(update={"request_key": request.request_key})
        self.metrics.failures.labels(event.reason.value).inc()
        self.metrics.renders.labels("failed").inc()
        await self.publisher.publish(VIDEO_FAILED, event)
