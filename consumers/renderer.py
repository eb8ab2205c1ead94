"""The renderer service (aiokafka, one per GPU): ``video.requested`` in, ``video.ready``/``video.failed`` out.

A pipeline, not a loop. The fetcher polls the request topics into a bounded queue and, when
``max_in_flight`` records are held (queued plus in the stages), pauses its partitions instead of stopping the
poll, so the consumer stays in its group. The dispatcher starts a job for the next record of every partition
that has none running, hot lane (hot products, promos, on-demand) first. Each job's stages run where they
belong: generation on the one GPU thread, image fetch, quality gate and encoding on a CPU pool, upload and
publish on the event loop — so while one job is encoded and uploaded the GPU already generates the next.

Within a partition records are processed one at a time, in offset order, and a record's offset is
committed only after its outcome is published and acknowledged: crash semantics are those of a serial loop.
A crash anywhere before the commit means redelivery; a stored manifest lets it republish without rendering
again, and the first render of a request to store its manifest is the one every publisher announces
(``consumers.delivery``). On a rebalance, renders of revoked partitions finish and commit before the handover.

What happens to a record is decided by what its error means (``skuvid.errors.classify``), never by where it
was raised: a transient fault (storage, broker, an image host, GPU memory) pauses *that* partition, seeks it
back to the record and tries again after an exponential, jittered backoff — the other partitions keep
flowing — until ``max_attempts``, when it ends as ``video.failed`` with the last reason; a permanent one is
published as ``video.failed`` at once; an undecodable record is dead-lettered; a fatal one ends the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from consumers.delivery import stored_ready, sweep, upload
from consumers.lag import aiokafka_lag, report_lag
from consumers.lane_queue import LaneQueue
from consumers.outcomes import dead_letter, failed_event
from inference.render_job import RenderJob
from inference.stage_timing import StageProgress
from producers.publisher import Publisher
from schemas.codec import decode
from schemas.events import Cost, VideoRequested
from schemas.topics import (
    DEAD_LETTER,
    REQUEST_TOPICS,
    VIDEO_FAILED,
    VIDEO_READY,
    VIDEO_REQUESTED,
    VIDEO_REQUESTED_HOT,
    VIDEO_REQUESTED_ONDEMAND,
)
from skuvid.errors import Classified, FatalError, Outcome, classify
from skuvid.health import Readiness, StallWatch
from skuvid.kafka_clients import aiokafka_options
from skuvid.logs import bind_event, bind_record
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


@dataclass
class _Spent:
    """GPU seconds one job used (all its attempts), for its cost."""

    gpu_seconds: float = 0.0


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
    """On revocation, hand the partitions over (``RendererService.release``) before the group moves them."""

    def __init__(self, service: RendererService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked) -> None:
        await self.service.release(set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        # An empty assignment still means the group was joined: this replica is ready, only idle.
        self.service.readiness.set("partitions_assigned", detail=f"{len(assigned)} partitions")


class RendererService:
    def __init__(self, settings: Settings, job: RenderJob, publisher: Publisher, store: ObjectStore,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.job = job
        self.publisher = publisher
        self.store = store
        self.metrics = metrics
        # On-demand renders (listing API) have a viewer waiting: they are taken with the hot lane.
        hot = {VIDEO_REQUESTED_HOT.name, VIDEO_REQUESTED_ONDEMAND.name}
        self.queue = LaneQueue(settings.max_in_flight, hot_topics=hot)
        self.retries: dict[TopicPartition, Retry] = {}
        self._attempts: dict[tuple[TopicPartition, int], int] = {}
        self.active: dict[TopicPartition, asyncio.Task] = {}  # at most one record per partition in the stages
        self.releasing: set[TopicPartition] = set()  # revoked, their jobs finishing: start nothing new on them
        self._wake = asyncio.Event()  # a record arrived or a job ended: the dispatcher may start another
        self.gpu_pool = ThreadPoolExecutor(1, thread_name_prefix="skuvid-gpu")  # one generation at a time
        self.cpu_pool = ThreadPoolExecutor(settings.postprocess_workers, thread_name_prefix="skuvid-post")
        self.stopping = asyncio.Event()
        self.stall = StallWatch(settings.render_stall_s)  # /healthz: a render running far too long
        self.readiness = Readiness("model_loaded", "partitions_assigned", "producer_connected")

    async def run(self) -> None:
        """Consume until ``stop()``; the job in progress finishes and is committed, queued ones are redelivered.
        Raises ``FatalError`` when a record meets a fault no retry can fix (credentials, configuration)."""
        consumer = AIOKafkaConsumer(**consumer_config(self.settings))
        consumer.subscribe([t.name for t in REQUEST_TOPICS], listener=_OnRebalance(self))
        await consumer.start()
        lag = asyncio.create_task(report_lag(self.metrics, self.settings.renderer_group, lambda: aiokafka_lag(consumer)))
        try:
            fetcher = asyncio.create_task(self._fetch(consumer), name="fetch")
            worker = asyncio.create_task(self._work(consumer), name="work")
            stopped = asyncio.create_task(self.stopping.wait(), name="stopped")
            await asyncio.wait({fetcher, worker, stopped}, return_when=asyncio.FIRST_COMPLETED)
            self.stopping.set()  # whichever ended first, end the others; jobs in the stages finish
            fetcher.cancel()
            results = await asyncio.gather(fetcher, worker, stopped, return_exceptions=True)
        finally:
            lag.cancel()
            await consumer.stop()
            self.gpu_pool.shutdown(wait=False, cancel_futures=True)
            self.cpu_pool.shutdown(wait=False, cancel_futures=True)
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise errors[0]

    def stop(self) -> None:
        self.stopping.set()

    async def release(self, partitions: set[TopicPartition]) -> None:
        """Hand ``partitions`` over to their next owner, who starts from the committed offset: drop their queued
        records and retries, and let their jobs in the stages finish and commit first (up to
        ``revoke_grace_s``; the group's rebalance waits meanwhile) — a job left running would be rendered
        twice. One that outlives the grace still ends well: the first render to store its manifest wins."""
        self.releasing |= partitions
        self.forget(partitions)
        running = [task for tp, task in self.active.items() if tp in partitions]
        if running:
            log.info("rebalance: %d render(s) of revoked partitions finish before the handover", len(running))
            _, late = await asyncio.wait(running, timeout=self.settings.revoke_grace_s)
            if late:
                log.warning("rebalance: %d render(s) still running after %.0f s; their next owner may render "
                            "them too (the first stored wins)", len(late), self.settings.revoke_grace_s)
        self.forget(partitions)  # a job that ended in a retry left one behind
        self.releasing -= partitions

    def forget(self, partitions: set[TopicPartition]) -> None:
        self.queue.drop(partitions)
        for tp in partitions:
            self.retries.pop(tp, None)

    # --- fetching ---------------------------------------------------------------------------------------

    def in_flight(self) -> int:
        """Records held by this renderer: queued, plus one per partition in the stages."""
        return self.queue.qsize() + len(self.active)

    async def _fetch(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            self._release_due_retries()
            free = self.settings.max_in_flight - self.in_flight()
            self._set_paused(consumer, full=free <= 0)
            batches = await consumer.getmany(timeout_ms=200, max_records=max(free, 1))
            for records in batches.values():
                for record in records:
                    self.queue.put_nowait(record)  # getmany returned at most `free` records
            if batches:
                self._wake.set()
            self.metrics.in_flight.set(self.in_flight())

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
        """Start a job for the next record of each partition that has none in the stages (hot lane first), so
        generation, post-processing and upload of different partitions overlap while every partition is still
        processed, and committed, in offset order. On stop, the jobs in the stages finish."""
        jobs: set[asyncio.Task] = set()
        while not self.stopping.is_set():
            self._wake.clear()
            record = self.queue.take(set(self.active) | self.releasing)
            if record is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.5)
                continue
            tp = TopicPartition(record.topic, record.partition)
            self.active[tp] = job = asyncio.create_task(self._job(consumer, tp, record), name=f"{tp}@{record.offset}")
            jobs.add(job)
            job.add_done_callback(jobs.discard)
        results = await asyncio.gather(*jobs, return_exceptions=True)
        fatal = [r for r in results if isinstance(r, FatalError)]
        if fatal:
            raise fatal[0]

    async def _job(self, consumer: AIOKafkaConsumer, tp: TopicPartition, record: ConsumerRecord) -> None:
        try:
            with bind_record(record):
                if await self.handle(record):
                    await self._commit(consumer, tp, record.offset)
                else:
                    self._seek_back(consumer, tp)
        except FatalError:
            self.stopping.set()
            raise
        finally:
            self.active.pop(tp, None)
            self._wake.set()
            self.metrics.in_flight.set(self.in_flight())

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
        spent = _Spent()
        try:
            await self._deliver(record, spent)
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
        self._charge("failed" if settled else "retried", spent)
        if settled:
            self._attempts.pop(key, None)
        else:
            self._schedule_retry(tp, record.offset, attempt, failure)
        return settled

    def _charge(self, outcome: str, spent: _Spent) -> None:
        self.metrics.charge(outcome, spent.gpu_seconds, self.settings.gpu_price_cny_per_hour)

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

    async def _deliver(self, record: ConsumerRecord, spent: _Spent) -> None:
        """Decode, render (or reuse), upload and publish; any failure raises and is classified by the caller."""
        request = decode(VIDEO_REQUESTED, record.value, max_bytes=self.settings.max_payload_bytes)
        assert isinstance(request, VideoRequested)
        bind_event(request)
        await self.render(request, spent)

    def _stages(self, request: VideoRequested):
        """The executors of one job: generation on the GPU thread (watched for stalls), the rest on the CPU
        pool. Both keep the job's logging context."""
        loop = asyncio.get_running_loop()

        async def gpu(fn, *args):
            with self.stall.job(request.request_key):
                return await loop.run_in_executor(self.gpu_pool, contextvars.copy_context().run, fn, *args)

        async def cpu(fn, *args):
            return await loop.run_in_executor(self.cpu_pool, contextvars.copy_context().run, fn, *args)

        return gpu, cpu

    async def render(self, request: VideoRequested, spent: _Spent | None = None) -> None:
        spent = spent or _Spent()
        prefix = self.settings.s3_prefix
        earlier = await stored_ready(self.store, request, prefix)
        if earlier is not None:
            self.metrics.renders.labels("reused").inc()
            await sweep(self.store, request, earlier, prefix)  # a crash may have cut the earlier sweep short
            with self.metrics.time_stage("publish"):
                await self.publisher.publish(VIDEO_READY, earlier)
            return
        started = time.perf_counter()
        log.info("render start %s %s", request.sku, request.request_key)
        with tempfile.TemporaryDirectory(prefix="skuvid-render-") as tmp:
            progress = StageProgress(self.metrics.observe_stage, gpu_clock=self.metrics.gpu_clock)
            gpu, cpu = self._stages(request)
            try:
                with progress:
                    rendered = await self.job.render_staged(request, Path(tmp), progress=progress, gpu=gpu, cpu=cpu)
            finally:
                spent.gpu_seconds = progress.gpu_seconds
            self.metrics.update_gpu_memory(getattr(self.job.generator, "device", None), reset_peak=True)
            cost = Cost.of(spent.gpu_seconds, self.settings.gpu_price_cny_per_hour)
            with self.metrics.time_stage("upload"):
                ready = await upload(self.store, request, rendered, prefix=prefix, cost=cost,
                                     content_producer=self.settings.label_content_producer)
        self.metrics.render_seconds.observe(time.perf_counter() - started)
        self.metrics.quality_attempts.observe(ready.quality.attempts)
        self.metrics.video_bytes.observe(ready.bytes)
        with self.metrics.time_stage("publish"):
            await self.publisher.publish(VIDEO_READY, ready)
        self._charge("ready", spent)
        self.metrics.renders.labels("ready").inc()
        log.info("published %s %s %s", request.sku, request.request_key, ready.video_url)
