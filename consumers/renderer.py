"""The renderer service (aiokafka, one per GPU): ``video.requested`` in, ``video.ready``/``video.failed`` out.

Two tasks share a bounded queue. The fetcher polls both request topics and, when ``max_in_flight`` jobs are
waiting, pauses its partitions instead of stopping the poll, so the consumer stays in its group. The worker
takes hot-lane records (hot products, promos) before bulk ones, renders one job at a time in a thread (the
event loop stays free for heartbeats), publishes the outcome, waits for the broker's acknowledgement, and
only then commits that record's offset. A crash anywhere before the commit means redelivery; the request key
makes the redelivered render land on the same storage key, and a stored manifest lets it republish without
rendering again.

What happens to a record is decided by what its error means (``skuvid.errors.classify``), never by where it
was raised: a transient fault (storage, broker, an image host, GPU memory) pauses *that* partition, seeks it
back to the record and tries again after an exponential, jittered backoff — the other partitions keep
flowing — until ``max_attempts``, when it ends as ``video.failed`` with the last reason; a permanent one is
published as ``video.failed`` at once; an undecodable record is dead-lettered; a fatal one ends the process.
"""

from __future__ import annotations

import asyncio
import logging
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from consumers.delivery import stored_ready, upload
from consumers.lane_queue import LaneQueue
from consumers.outcomes import dead_letter, failed_event
from inference.render_job import RenderJob
from producers.publisher import Publisher
from schemas.codec import decode
from schemas.events import VideoRequested
from schemas.topics import DEAD_LETTER, REQUEST_TOPICS, VIDEO_FAILED, VIDEO_READY, VIDEO_REQUESTED, VIDEO_REQUESTED_HOT
from skuvid.errors import Classified, FatalError, Outcome, classify
from skuvid.kafka_clients import aiokafka_options
from skuvid.metrics import Metrics
from skuvid.settings import Settings
from skuvid.storage import ObjectStore

log = logging.getLogger(__name__)


def consumer_config(settings: Settings) -> dict:
    return {
        **aiokafka_options(settings),  # bootstrap servers and security, as every skuvid client connects
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


@dataclass(frozen=True)
class Retry:
    """A record to try again: its partition is paused and sought back to ``offset`` until ``due``."""

    offset: int
    due: float  # time.monotonic()
    attempt: int


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """Exponential backoff with jitter: ``base * 2**(attempt-1)``, capped at ``max_s``, times U(0.5, 1)."""
    return min(max_s, base_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


class _OnRebalance(ConsumerRebalanceListener):
    """On revocation, forget queued records and pending retries of lost partitions: the new owner has them."""

    def __init__(self, service: RendererService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked) -> None:
        self.service.forget(set(revoked))

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
        self.retries: dict[TopicPartition, Retry] = {}
        self._attempts: dict[tuple[TopicPartition, int], int] = {}
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        """Consume until ``stop()``; the job in progress finishes and is committed, queued ones are redelivered.
        Raises ``FatalError`` when a record meets a fault no retry can fix (credentials, configuration)."""
        consumer = AIOKafkaConsumer(**consumer_config(self.settings))
        consumer.subscribe([t.name for t in REQUEST_TOPICS], listener=_OnRebalance(self))
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

    def forget(self, partitions: set[TopicPartition]) -> None:
        self.queue.drop(partitions)
        for tp in partitions:
            self.retries.pop(tp, None)

    # --- fetching ---------------------------------------------------------------------------------------

    async def _fetch(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            self._release_due_retries()
            free = self.queue.free()
            self._set_paused(consumer, full=free == 0)
            batches = await consumer.getmany(timeout_ms=200, max_records=max(free, 1))
            for records in batches.values():
                for record in records:
                    self.queue.put_nowait(record)  # getmany returned at most `free` records
            self.metrics.in_flight.set(self.queue.qsize())

    def _release_due_retries(self) -> None:
        now = time.monotonic()
        for tp in [tp for tp, retry in self.retries.items() if retry.due <= now]:
            del self.retries[tp]

    def _set_paused(self, consumer: AIOKafkaConsumer, *, full: bool) -> None:
        """Pause everything while the queue is full; otherwise only partitions waiting for a retry."""
        assigned = consumer.assignment()
        held = {tp for tp in self.retries if tp in assigned}
        paused = set(assigned) if full else held
        if paused:
            consumer.pause(*paused)
        resumable = set(consumer.paused()) - paused
        if resumable:
            consumer.resume(*resumable)
        self.metrics.paused.set(1 if full and assigned else 0)

    # --- working ----------------------------------------------------------------------------------------

    async def _work(self, consumer: AIOKafkaConsumer) -> None:
        while not self.stopping.is_set():
            record = await self.queue.get(timeout_s=0.5)
            if record is None:
                continue
            tp = TopicPartition(record.topic, record.partition)
            if await self.handle(record):
                await self._commit(consumer, tp, record.offset)
            else:
                self._seek_back(consumer, tp)
            self.metrics.in_flight.set(self.queue.qsize())

    def _seek_back(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        """Rewind ``tp`` to the record to retry and hold it paused: its later records must wait (commits are
        per partition and in order), records of other partitions go on."""
        retry = self.retries.get(tp)
        if retry is None or tp not in consumer.assignment():
            return
        self.queue.drop({tp})
        consumer.pause(tp)
        consumer.seek(tp, retry.offset)

    async def _commit(self, consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> None:
        try:
            await consumer.commit({tp: OffsetAndMetadata(offset + 1, "")})
        except KafkaError as exc:
            # The partition moved during the job, or the coordinator is away: the record comes again and,
            # finding the stored manifest, is republished without rendering. A later commit covers it too.
            log.warning("commit of %s@%d skipped: %s", tp, offset, exc)

    async def handle(self, record: ConsumerRecord) -> bool:
        """Process one record to a durable outcome (True: commit it) or schedule it for a retry (False)."""
        self.metrics.events_consumed.labels(record.topic).inc()
        tp = TopicPartition(record.topic, record.partition)
        key = (tp, record.offset)
        try:
            await self._deliver(record)
            self._attempts.pop(key, None)
            return True
        except Exception as exc:  # noqa: BLE001 - every error is classified below; nothing is swallowed
            failure = classify(exc)
            if failure.outcome is not Outcome.RETRY:
                log.warning("%s@%d: %s %s", tp, record.offset, failure.outcome, failure.message,
                            exc_info=failure.reason.value == "internal_error")
        attempt = self._attempts.get(key, 0) + 1
        self._attempts[key] = attempt
        try:
            settled = await self._settle(record, failure, attempt)
        except FatalError:
            raise
        except Exception as exc:  # noqa: BLE001 - publishing the outcome failed (broker down): try again later
            failure = classify(exc)
            if failure.outcome is Outcome.FATAL:
                raise FatalError(failure.message, reason=failure.reason) from exc
            settled = False
        if settled:
            self._attempts.pop(key, None)
        else:
            self._schedule_retry(tp, record.offset, attempt, failure)
        return settled

    async def _settle(self, record: ConsumerRecord, failure: Classified, attempt: int) -> bool:
        """Publish the outcome ``failure`` calls for; False when the record is to be retried instead."""
        if failure.outcome is Outcome.FATAL:
            raise FatalError(failure.message, reason=failure.reason)
        if failure.outcome is Outcome.DEAD_LETTER:
            self.metrics.dead_letters.labels(failure.reason.value).inc()
            await self.publisher.publish(DEAD_LETTER, dead_letter(
                topic=record.topic, partition=record.partition, offset=record.offset,
                key=record.key, value=record.value, reason=failure.reason, message=failure.message,
            ))
            return True
        if failure.outcome is Outcome.RETRY and attempt < self.settings.max_attempts:
            return False
        request = decode(VIDEO_REQUESTED, record.value, max_bytes=self.settings.max_payload_bytes)
        assert isinstance(request, VideoRequested)
        event = failed_event(failure, sku=request.sku, source_event_id=request.source_event_id,
                             request_key=request.request_key, attempts=attempt, variant_id=request.variant_id)
        await self.publisher.publish(VIDEO_FAILED, event)
        self.metrics.failures.labels(event.reason.value).inc()
        self.metrics.renders.labels("failed").inc()
        return True

    def _schedule_retry(self, tp: TopicPartition, offset: int, attempt: int, failure: Classified) -> None:
        delay = backoff_s(attempt, self.settings.retry_backoff_s, self.settings.retry_backoff_max_s)
        self.retries[tp] = Retry(offset=offset, due=time.monotonic() + delay, attempt=attempt)
        self.metrics.renders.labels("retried").inc()
        log.warning("%s@%d: attempt %d/%d failed (%s: %s); retrying in %.1f s", tp, offset, attempt,
                    self.settings.max_attempts, failure.reason.value, failure.message, delay)

    async def _deliver(self, record: ConsumerRecord) -> None:
        """Decode, render (or reuse), upload and publish; any failure raises and is classified by the caller."""
        request = decode(VIDEO_REQUESTED, record.value, max_bytes=self.settings.max_payload_bytes)
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
            rendered = await asyncio.to_thread(self.job.render, request, Path(tmp))
            ready = await upload(self.store, request, rendered, prefix=prefix,
                                 content_producer=self.settings.label_content_producer)
        self.metrics.render_seconds.observe(time.perf_counter() - started)
        self.metrics.quality_attempts.observe(ready.quality.attempts)
        self.metrics.video_bytes.observe(ready.bytes)
        await self.publisher.publish(VIDEO_READY, ready)
        self.metrics.renders.labels("ready").inc()
        log.info("published %s %s %s", request.sku, request.request_key, ready.video_url)
