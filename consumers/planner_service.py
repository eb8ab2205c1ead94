"""The planner process on aiokafka: one consumer group member that plans its catalog partitions.

One ``AIOKafkaConsumer`` in the planner group reads the catalog topics, ``promo.started`` and the planner's two
internal topics (promo fan-out, update-storm ticks). The range assignor gives a member the same partition
numbers of every topic with the catalog's partition count, so the records of a SKU and its table partitions
(``consumers.planner_tables``) are always on one member. Tables of newly assigned partitions are brought up
to their changelogs' end before the first record of the new assignment is handed out.

A fetched batch is handled record by record (``PlannerFlow``); its outputs go into producer batches
(``Outbox``); once the broker acknowledged them (acks=all) its tables' changelog records are sent, and once
those are acknowledged too the batch's offsets are committed: at-least-once, as with faust, without its per-message delivery (a task, a future and
bookkeeping per record), which cost as much CPU as planning does. An output that is never acknowledged ends
the process (exit 1) before anything after it is committed.

Ticks are due later than they arrive: a tick not yet due is kept in memory (with every later tick of its
partition, which are due later still) and the partition's committed offset stays at the first one kept, until
a timer hands it to the flow. A revoked partition's work is finished, acknowledged and committed before the
group moves it (the listener waits for the batch in progress), its kept ticks are dropped (its next owner reads
them again) and its stores are closed.

Errors are classified per record (``skuvid.errors.classify``): an undecodable record is dead-lettered, a
planning bug becomes ``video.failed`` for that product; a transient or fatal error ends the process without
committing, so the restarted planner plans the record again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from pydantic import BaseModel

from consumers.lag import aiokafka_lag, report_lag
from consumers.outcomes import dead_letter, failed_event
from consumers.planner import (
    CATALOG_PARTITIONS,
    Coalescer,
    CoalesceTick,
    Outbox,
    PlannerFlow,
    PromoTarget,
    RecordEncoder,
    Send,
    SentBatch,
    acknowledged,
    coalesce_topic,
    exit_undelivered,
    fanout_topic,
    promo_targets,
)
from consumers.planner_tables import TABLES, Layer, PlannerTables
from consumers.planning import Planner
from inference.prompt import PromptEngine
from producers.publisher import producer_config as publisher_producer_config
from schemas.codec import ce_headers, decode, record_key
from schemas.events import ProductCreated, PromoStarted
from schemas.topics import (
    DEAD_LETTER,
    PRODUCT_CREATED,
    PRODUCT_UPDATED,
    PROMO_STARTED,
    REQUEST_TOPICS,
    VIDEO_FAILED,
    VIDEO_PLANNED,
    Topic,
)
from skuvid.errors import Outcome, classify
from skuvid.health import Readiness
from skuvid.kafka_clients import aiokafka_options
from skuvid.logs import bind_event, bind_record
from skuvid.metrics import Metrics
from skuvid.settings import Settings

log = logging.getLogger(__name__)

READY_LINE = "planner ready"
MAX_COMPLETIONS = 4  # batches handed to the producer whose acknowledgements, changelog and commit are on the way
REBALANCE_TIMEOUT_MS = 120_000  # a member finishes its batch (one part of a category scan at most) before the move


def producer_config(settings: Settings) -> dict[str, Any]:
    """The publisher's producer (acks=all, idempotent), with large batches (the outbox fills them) and the
    delivery timeout the planner rides a broker outage out with."""
    return {
        **publisher_producer_config(settings),
        "client_id": f"{settings.kafka_client_id}-planner",
        "max_batch_size": 1 if settings.kafka_one_record_batches else 512 * 1024,
        "request_timeout_ms": settings.kafka_delivery_timeout_ms,
    }


def consumer_config(settings: Settings, *, group: bool = True) -> dict[str, Any]:
    config: dict[str, Any] = {
        **aiokafka_options(settings),
        "client_id": f"{settings.kafka_client_id}-planner",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": 4 * 1_048_576,
    }
    if group:
        config |= {
            "group_id": settings.planner_group,
            "partition_assignment_strategy": (RangePartitionAssignor,),  # co-partitioned topics on one member
            "session_timeout_ms": settings.session_timeout_ms,
            "heartbeat_interval_ms": settings.heartbeat_interval_ms,
            "max_poll_interval_ms": settings.max_poll_interval_ms,
            "rebalance_timeout_ms": REBALANCE_TIMEOUT_MS,
        }
    return config


def source_topics(settings: Settings) -> list[str]:
    return [PRODUCT_CREATED.name, PRODUCT_UPDATED.name, PROMO_STARTED.name, fanout_topic(settings),
            coalesce_topic(settings)]


class _OnRebalance(ConsumerRebalanceListener):
    def __init__(self, service: PlannerService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked) -> None:
        await self.service.release(set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        await self.service.take(set(assigned))


class PlannerService:
    """The planner's consumer loop (module doc). ``run()`` until ``stop()``."""

    def __init__(self, settings: Settings, engine: PromptEngine, metrics: Metrics) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.readiness = Readiness("group_joined", "tables_recovered")
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()  # one batch, tick round or rebalance step at a time
        self._next: dict[TopicPartition, int] = {}  # next offset of each partition, handled up to it
        self._sealed_at: dict[TopicPartition, int] = {}  # offsets handed to a completion already
        self._completions: deque[asyncio.Task] = deque()  # batches on their way to the broker, oldest first
        self._ticks: dict[TopicPartition, deque[tuple[int, CoalesceTick]]] = {}
        self._tick_added = asyncio.Event()
        self._ready_logged = False
        self._broken: BaseException | None = None  # a rebalance step failed: the process must not go on
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self._reader: AIOKafkaConsumer | None = None

    def stop(self) -> None:
        self._stopping.set()

    # --- wiring ------------------------------------------------------------------------------------------

    def _wire(self) -> None:
        settings = self.settings
        partitions = {t.name: t.partitions for t in (*REQUEST_TOPICS, VIDEO_FAILED, DEAD_LETTER, VIDEO_PLANNED)}
        partitions[fanout_topic(settings)] = partitions[coalesce_topic(settings)] = CATALOG_PARTITIONS
        self.box = Outbox(lambda: self.producer, partitions, exit_undelivered)
        self.tables = PlannerTables(settings)
        changelogs = {table.topic: CATALOG_PARTITIONS for table in self.tables.tables.values()}
        self.changelog_box = Outbox(lambda: self.producer, changelogs, exit_undelivered)  # sent by completions
        self.tick_topic = Topic(coalesce_topic(settings), CoalesceTick, CATALOG_PARTITIONS, "update-storm ticks")
        self.fanout = Topic(fanout_topic(settings), PromoTarget, CATALOG_PARTITIONS, "promo fan-out and scan parts")
        coalescer = Coalescer(settings.planner_coalesce_s) if settings.planner_coalesce_s > 0 else None
        self.send = self._sender()
        catalog, planned, held = (self.tables.tables[name] for name in TABLES)
        self.flow = PlannerFlow(Planner(self.engine, settings), self.engine, catalog, planned, self.send,
                                self.metrics, render_policy=settings.render_policy, held=held, coalescer=coalescer,
                                tick_topic=self.tick_topic, checkpoint=self._checkpoint, fanout_topic=self.fanout)
        self._handlers: dict[str, Callable[[ConsumerRecord], Awaitable[None]]] = {
            PRODUCT_CREATED.name: self._on_product, PRODUCT_UPDATED.name: self._on_product,
            PROMO_STARTED.name: self._on_promo, fanout_topic(settings): self._on_promo_target,
            coalesce_topic(settings): self._on_tick,
        }
        self._consumed = {topic: self.metrics.events_consumed.labels(topic) for topic in self._handlers}

    def _sender(self) -> Send:
        encode = RecordEncoder()

        async def send(topic: Topic, event: BaseModel, key: bytes | None = None, partition: int | None = None):
            await self.box.add(topic.name, key if key is not None else record_key(event), encode(event),
                               ce_headers(topic, event), partition)

        return send

    async def _checkpoint(self) -> None:
        """A long category scan hands its outputs to the producer and lets the loop run (heartbeats, probes)."""
        await self.box.flush()
        await asyncio.sleep(0)

    # --- the loop ----------------------------------------------------------------------------------------

    async def run(self) -> None:
        settings = self.settings
        self._wire()
        self.producer = AIOKafkaProducer(**producer_config(settings))
        self._reader = AIOKafkaConsumer(**consumer_config(settings, group=False))
        self.consumer = AIOKafkaConsumer(**consumer_config(settings))
        clean = False
        try:
            await self.producer.start()
            await self._reader.start()
            await self.consumer.start()
            self.consumer.subscribe(source_topics(settings), listener=_OnRebalance(self))
            lag = asyncio.create_task(report_lag(self.metrics, settings.planner_group,
                                                 lambda: aiokafka_lag(self.consumer)))
            timer = asyncio.create_task(self._tick_timer())
            try:
                await self._consume()
            finally:
                timer.cancel()
                lag.cancel()
            if self._broken is not None:
                raise self._broken
            async with self._lock:
                await self._drain()
            clean = True
        finally:
            await self._close(clean)

    async def _consume(self) -> None:
        assert self.consumer is not None
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                fetch = asyncio.ensure_future(self.consumer.getmany(timeout_ms=1000,
                                                                    max_records=self.settings.planner_batch_max))
                await asyncio.wait([fetch, stopping], return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():
                    fetch.cancel()
                    break
                batch = fetch.result()
                if batch:
                    async with self._lock:
                        await self._handle(batch)
        finally:
            stopping.cancel()

    async def _handle(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        if self._broken is not None:
            raise self._broken
        owned = self.consumer.assignment() if self.consumer is not None else set()
        for tp, records in batch.items():
            if tp not in owned:
                continue  # revoked since it was fetched: its new owner handles it
            handler = self._handlers[tp.topic]
            self.tables.partition = tp.partition if tp.topic != PROMO_STARTED.name else None
            for record in records:
                await handler(record)
                self._next[tp] = record.offset + 1
        self.tables.partition = None
        await self._seal()

    async def _seal(self) -> None:
        """Hand this batch's outputs to the producer and start its completion (``_complete``), which ends by
        committing how far each partition is done (a partition with kept ticks: up to its first kept tick). The
        next batch is handled meanwhile; completions run in order, at most ``MAX_COMPLETIONS`` at a time."""
        await self.box.flush()
        sent, layer = self.box.take_sent(), self.tables.seal()
        offsets = {}
        for tp, offset in self._next.items():
            kept = self._ticks.get(tp)
            if kept:
                offset = kept[0][0]
            if self._sealed_at.get(tp) != offset:
                offsets[tp] = offset
        self._sealed_at.update(offsets)
        previous = self._completions[-1] if self._completions else None
        self._completions.append(asyncio.create_task(self._complete(previous, sent, layer, offsets)))
        while self._completions and (self._completions[0].done() or len(self._completions) > MAX_COMPLETIONS):
            await self._completions.popleft()  # raises what a completion raised: the process ends uncommitted

    async def _complete(self, previous: asyncio.Task | None, sent: list[SentBatch], layer: Layer,
                        offsets: dict[TopicPartition, int]) -> None:
        """Outputs acknowledged → the tables' changelog records sent and acknowledged → the layer into the
        stores → the offsets committed. Changelogs after outputs: a changelog never says "planned" for a
        request the broker does not have (a crash in between re-sends it: at least once)."""
        if previous is not None:
            await asyncio.shield(previous)  # in order (its failure ends the process through _seal)
        await acknowledged(sent)
        for topic, partition, key, value in self.tables.changelog(layer):
            self.changelog_box.append(topic, key, value, [], partition)
        await self.changelog_box.flush()
        written = await acknowledged(self.changelog_box.take_sent())
        self.tables.write(layer, written)  # the changelog has them now
        assert self.consumer is not None
        owned = self.consumer.assignment()
        offsets = {tp: offset for tp, offset in offsets.items() if tp in owned}
        if offsets:
            await self.consumer.commit(offsets)

    async def _drain(self) -> None:
        """Seal what is open and wait for every completion."""
        await self._seal()
        while self._completions:
            await self._completions.popleft()

    # --- handlers (one record each) ----------------------------------------------------------------------

    async def _on_product(self, record: ConsumerRecord) -> None:
        self._consumed[record.topic].inc()
        product = None
        with bind_record(record):
            try:
                product = decode(record.topic, record.value, max_bytes=self.settings.max_payload_bytes)
                assert isinstance(product, ProductCreated)
                bind_event(product)
                await self.flow.on_product(product, partition=record.partition)
            except Exception as exc:  # noqa: BLE001 - classified in settle(); nothing is swallowed
                await self._settle(record, exc, getattr(product, "sku", None), getattr(product, "event_id", None))

    async def _on_promo(self, record: ConsumerRecord) -> None:
        self._consumed[record.topic].inc()
        with bind_record(record):
            try:
                promo = decode(record.topic, record.value, max_bytes=self.settings.max_payload_bytes)
                assert isinstance(promo, PromoStarted)
                for key, partition, target in promo_targets(promo):  # written as the flow writes scan parts
                    await self.send(self.fanout, target, key=key, partition=partition)
            except Exception as exc:  # noqa: BLE001 - classified in settle()
                await self._settle(record, exc, None, None)

    async def _on_promo_target(self, record: ConsumerRecord) -> None:
        self._consumed[record.topic].inc()
        target = PromoTarget.model_validate_json(record.value)  # written by _on_promo: a defect here is a bug
        with bind_record(record):
            try:
                await self.flow.on_promo_target(target, partition=record.partition)
            except Exception as exc:  # noqa: BLE001 - classified in settle()
                await self._settle(record, exc, target.sku, target.promo.event_id)

    async def _on_tick(self, record: ConsumerRecord) -> None:
        self._consumed[record.topic].inc()
        tick = CoalesceTick.model_validate_json(record.value)  # written by the planner itself
        tp = TopicPartition(record.topic, record.partition)
        kept = self._ticks.setdefault(tp, deque())
        if kept or tick.due > time.time():  # ticks of a partition come in due order: keep it, and all after it
            kept.append((record.offset, tick))
            self._tick_added.set()
            return
        await self.flow.on_tick(tick)

    async def _tick_timer(self) -> None:
        """Hand kept ticks to the flow when they are due, then deliver and commit."""
        while True:
            heads = [kept[0][1].due for kept in self._ticks.values() if kept]
            wait = max(0.0, min(heads) - time.time()) if heads else None
            try:
                await asyncio.wait_for(self._tick_added.wait(), wait)
            except TimeoutError:
                pass
            self._tick_added.clear()
            async with self._lock:
                if await self._due_ticks():
                    await self._seal()

    async def _due_ticks(self) -> int:
        handled = 0
        for tp, kept in self._ticks.items():
            self.tables.partition = tp.partition
            while kept and kept[0][1].due <= time.time():
                await self.flow.on_tick(kept.popleft()[1])
                handled += 1
        self.tables.partition = None
        return handled

    async def _settle(self, record: ConsumerRecord, exc: Exception, sku: str | None,
                      source_event_id: str | None) -> None:
        """What ``exc`` means for this record: dead letter, ``video.failed``, or (transient, fatal) re-raise so
        nothing is committed and the restarted process plans it again."""
        failure = classify(exc)
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        if failure.outcome is Outcome.DEAD_LETTER:
            self.metrics.dead_letters.labels(failure.reason.value).inc()
            log.warning("dead-lettering %s: %s", where, failure.message)
            await self.send(DEAD_LETTER, dead_letter(
                topic=record.topic, partition=record.partition, offset=record.offset, key=record.key,
                value=record.value, reason=failure.reason, message=failure.message,
            ))
        elif failure.outcome is Outcome.FAILED:
            log.error("planning %s (%s) failed: %s", sku, where, failure.message, exc_info=exc)
            self.metrics.failures.labels(failure.reason.value).inc()
            await self.send(VIDEO_FAILED, failed_event(failure, sku=sku, source_event_id=source_event_id))
        else:
            raise exc

    # --- rebalancing -------------------------------------------------------------------------------------

    async def take(self, assigned: set[TopicPartition]) -> None:
        """Newly assigned partitions: open and recover their tables before their first record is handled. A
        failure here (aiokafka only logs what a listener raises) stops the planner before it handles a record
        without its tables; the restarted process recovers them again."""
        self.readiness.set("group_joined", detail=f"{len(assigned)} partitions")
        partitions = _catalog_partitions(assigned)
        async with self._lock:
            started = time.monotonic()
            try:
                self.tables.open(partitions)
                assert self._reader is not None
                applied = await self.tables.recover(self._reader, partitions)
            except Exception as exc:
                self._break(f"recovering the tables of partitions {sorted(partitions)} failed", exc)
                raise
        took = time.monotonic() - started
        self.readiness.set("tables_recovered", detail=f"{applied} changelog records in {took:.1f} s")
        log.info("tables of partitions %s recovered: %d changelog records in %.2f s", sorted(partitions), applied,
                 took)
        if not self._ready_logged:
            self._ready_logged = True
            log.info("%s: %d partitions assigned", READY_LINE, len(assigned))

    async def release(self, revoked: set[TopicPartition]) -> None:
        """Partitions moving away: finish, acknowledge and commit their work, then forget them."""
        async with self._lock:
            try:
                if self.consumer is not None and self.producer is not None:
                    await self._drain()
            except Exception as exc:
                self._break(f"handing over partitions {sorted(map(tuple, revoked))} failed", exc)
                raise
            for tp in revoked:
                self._ticks.pop(tp, None)
                self._next.pop(tp, None)
                self._sealed_at.pop(tp, None)
            self.tables.close(_catalog_partitions(revoked))

    def _break(self, what: str, exc: BaseException) -> None:
        log.critical("%s: stopping the planner (its uncommitted input is planned again after a restart)", what,
                     exc_info=exc)
        self._broken = exc
        self.stop()

    async def _close(self, clean: bool) -> None:
        for client in (self.consumer, self._reader):
            if client is not None:
                try:
                    await client.stop()
                except Exception as exc:  # noqa: BLE001 - closing: what matters was committed or not
                    log.warning("stopping a planner consumer failed: %r", exc)
        if self.producer is not None:
            await self.producer.stop()
        self.tables.close()
        if not clean:
            log.error("the planner stopped on an error: uncommitted input is planned again after a restart")


def _catalog_partitions(tps: Iterable[TopicPartition]) -> set[int]:
    """Partition numbers of the catalog-partitioned topics among ``tps`` (not ``promo.started``'s)."""
    return {tp.partition for tp in tps if tp.topic != PROMO_STARTED.name}
