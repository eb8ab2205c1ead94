"""The planner's decisions: catalog and promo events in, ``video.requested`` out (the process that runs them:
``consumers.planner_service``).

State lives in three changelog-backed tables partitioned like the product topics (by SKU), on RocksDB
(``Settings.planner_store``; memory only for tests that ask for it): ``catalog`` (sku -> latest snapshot),
``planned`` (sku|variant -> last request key, for dedup) and ``held`` (sku|variant -> a request held back by
the update-storm window, see below).

Promo fan-out stays partition-local: ``promo.started`` (one partition) is re-keyed onto the internal
``<group>-promo-fanout`` topic, co-partitioned with the catalog: one record per listed SKU, and one
"category scan" record per partition, which each owner answers from its own part of the catalog table (on
RocksDB: that partition's database only), in key order and in parts: after ``SCAN_PART_ROWS`` rows the scan
sends itself, resuming after the last SKU it read, to the end of its fan-out partition, so a scan of any size
holds the planner (its product events, a rebalance) for one part at a time. A listed SKU the catalog does not
know gets ``video.failed`` with reason ``unknown_sku``.

Every planned request is also recorded on the compacted ``video.planned`` topic (keyed ``sku|variant_id``),
which the listing API's video index reads. ``Settings.render_policy`` decides which requests are sent to a
render lane at once (``dispatches_now``); the others (lazy, or the long tail under auto) are only recorded
there, and the API sends them on the listing's first view.

Update storms are coalesced here, before any GPU time is spent (``Coalescer``): a SKU variant is sent to a
render lane at most once per ``Settings.planner_coalesce_s``. A newer plan inside that window is held (``held``
table, the newest replaces the older) and a tick record on the internal ``<group>-coalesce`` topic, due when
the window closes, sends the newest held plan then: 20 updates in 10 s render two videos, the first version
and the last. Held plans are recorded on ``video.planned`` when they are sent, never before.

Delivery: every output record — and the tables' changelog records — is appended into producer record batches
(``Outbox``, one per process, so a partition's records keep the order they were written in), handed to the
producer and acknowledged (acks=all) before the input they came from is committed. An output the broker never
acknowledges ends the process (exit 1) before anything after it is committed, so the uncommitted input is
planned again after the restart.

``PlannerFlow`` is plain Python over mappings, unit-testable without a broker; the service classifies every
error (``skuvid.errors.classify``): an undecodable record is dead-lettered, a planning bug becomes
``video.failed`` (``internal_error``) for that product, never a decode error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel, TypeAdapter

from consumers.outcomes import failed_event
from consumers.planner_tables import TABLES, changelog_topic
from consumers.planning import Planner
from inference.prompt import PromptEngine
from schemas.events import Lane, ProductCreated, ProductSnapshot, PromoStarted, Reason, VideoPlanned, VideoRequested
from schemas.topics import (
    DEAD_LETTER,
    INPUT_TOPICS,
    PRODUCT_CREATED,
    REQUEST_TOPICS,
    VIDEO_FAILED,
    VIDEO_PLANNED,
    Topic,
    request_topic,
)
from skuvid.brokers import BrokerError, ensure_topics
from skuvid.errors import FatalError, SkuvidError
from skuvid.kafka_clients import bootstrap_list, security_options
from skuvid.metrics import Metrics
from skuvid.partitioning import partition_for
from skuvid.settings import Settings

log = logging.getLogger(__name__)

CATALOG_PARTITIONS = PRODUCT_CREATED.partitions
EXIT_UNDELIVERED = 1
SCAN_CHECKPOINT_EVERY = 256  # a category scan hands its outputs to the producer and yields this often
SCAN_PART_ROWS = 4096  # catalog rows one fan-out record scans; the rest of the scan is a new record


class PromoTarget(BaseModel):
    """Internal fan-out record: a promo for one SKU, or (part of) a category scan of one catalog partition: the
    rows after SKU ``after`` (None: from the first), ``SCAN_PART_ROWS`` of them at most."""

    promo: PromoStarted
    sku: str | None = None
    scan_partition: int | None = None
    after: str | None = None


class CoalesceTick(BaseModel):
    """Internal record: send the newest held plan of ``slot`` once ``due`` (epoch seconds) has passed."""

    slot: str
    due: float


def owns(sku: str, partition: int) -> bool:
    """Whether ``sku``'s records land in ``partition`` (Kafka's default murmur2 partitioner)."""
    return partition_for(sku.encode(), CATALOG_PARTITIONS) == partition


def category_keys(engine: PromptEngine, category: str) -> set[str]:
    """What a category matches in a promo: its own text, and its template unless it only fell back to generic
    ("kitchen" and "厨具" are the same template; an unknown word matches only itself)."""
    keys = {category.casefold()}
    template = engine.template_for(category).id
    if template != "generic":
        keys.add(f"template:{template}")
    return keys


# send(topic, event, key=None, partition=None): key None is the event's record key, partition None the
# default partitioner's choice.
Send = Callable[..., Awaitable[None]]


# --- render policy (listing API): which planned requests go to a render lane at once -------------------


def dispatches_now(policy: str, request: VideoRequested) -> bool:
    """Whether ``request`` is sent to its render lane when planned (``Settings.render_policy``): always
    (eager), never (lazy: held in ``video.planned`` until the listing's first view), or for the hot lane —
    hot products and promos — only (auto)."""
    if policy == "eager":
        return True
    if policy == "lazy":
        return False
    return request.lane is Lane.HOT


def planned_event(request: VideoRequested, *, dispatched: bool) -> VideoPlanned:
    return VideoPlanned(event_id=f"plan-{request.request_key[:32]}", occurred_at=request.occurred_at,
                        request=request, dispatched=dispatched)


# --- end of render policy -------------------------------------------------------------------------------


def fanout_topic(settings: Settings) -> str:
    """The internal promo fan-out topic of this planner group (one per group, like the tables' changelogs)."""
    return f"{settings.planner_group}-promo-fanout"


def coalesce_topic(settings: Settings) -> str:
    """The internal topic of update-storm ticks (co-partitioned with the catalog, one per group)."""
    return f"{settings.planner_group}-coalesce"


def changelog_topics(settings: Settings) -> list[str]:
    """The changelog topics of the planner's tables (``<group>-<table>-changelog``)."""
    return [changelog_topic(settings.planner_group, table) for table in TABLES]


def ensure_planner_topics(settings: Settings) -> None:
    """Create (or verify) every topic the planner reads or writes — inputs, outputs, its changelogs and its
    internal topics, with their partition counts — before the planner joins its group: a table partition
    writes to, and recovers from, its changelog partition of the same number. Raises ``FatalError``
    when a topic exists with another partition count or cannot be created."""
    outputs = (*REQUEST_TOPICS, VIDEO_FAILED, DEAD_LETTER, VIDEO_PLANNED)
    wanted = {t.name: t.partitions for t in (*INPUT_TOPICS, *outputs)}
    internal = [*changelog_topics(settings), fanout_topic(settings), coalesce_topic(settings)]
    wanted |= dict.fromkeys(internal, CATALOG_PARTITIONS)
    compact = {"cleanup.policy": "compact"}
    try:
        ensure_topics(",".join(bootstrap_list(settings)), wanted, replication=settings.kafka_replication_factor,
                      configs=dict.fromkeys([*changelog_topics(settings), VIDEO_PLANNED.name], compact),
                      client_options=security_options(settings))
    except BrokerError as exc:
        raise FatalError(f"the planner's topics are not usable: {exc}", reason=Reason.BROKER_UNAVAILABLE) from None


class Coalescer:
    """When each SKU variant was last sent to a render lane (the update-storm window), one per
    planner: slot -> (when, request key) for the last ``window_s`` seconds, by ``clock`` (epoch seconds).

    Memory only: after a restart the first plan of a slot is sent at once again — one more video at most,
    never one less (held plans and their ticks are in the ``held`` table and on the tick topic)."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.time) -> None:
        self.window_s = window_s
        self.clock = clock
        self._sent: dict[str, tuple[float, str]] = {}
        self._order: deque[tuple[float, str]] = deque()

    def last_sent(self, slot: str) -> tuple[float, str] | None:
        """(when, request key) of the slot's last send inside the window, or None."""
        sent = self._sent.get(slot)
        if sent is None or self.clock() - sent[0] >= self.window_s:
            return None
        return sent

    def sent(self, slot: str, key: str) -> None:
        now = self.clock()
        self._sent[slot] = (now, key)
        order = self._order
        order.append((now, slot))
        horizon = now - self.window_s
        while order and order[0][0] < horizon:
            when, old = order.popleft()
            if self._sent.get(old, (None,))[0] == when:
                del self._sent[old]


class PlannerFlow:
    """The planner's decisions over its tables (``catalog``: sku -> snapshot JSON, ``planned``: sku|variant ->
    request key, ``held``: sku|variant -> request JSON), free of Kafka: the service calls it with its tables
    (``consumers.planner_tables``), tests with dicts.

    ``coalescer`` (or ``coalesce_s`` > 0 and ``clock``: one of its own) turns on the update-storm window (module
    doc); ``tick_topic`` is the topic its ticks go to. ``checkpoint`` is awaited every ``SCAN_CHECKPOINT_EVERY``
    products of a category scan (the service hands outputs to the producer there and lets the event loop run).
    ``fanout_topic``: where a category scan sends the rest of itself after ``scan_part_rows`` rows (None: a scan
    reads its whole partition in one go)."""

    def __init__(self, planner: Planner, engine: PromptEngine, catalog: MutableMapping, planned: MutableMapping,
                 send: Send, metrics: Metrics, render_policy: str = "eager", *,
                 held: MutableMapping | None = None, coalesce_s: float = 0.0, tick_topic: Topic | None = None,
                 clock: Callable[[], float] = time.time, coalescer: Coalescer | None = None,
                 checkpoint: Callable[[], Awaitable[None]] | None = None, fanout_topic: Topic | None = None,
                 scan_part_rows: int = SCAN_PART_ROWS) -> None:
        if coalescer is None and coalesce_s > 0:
            coalescer = Coalescer(coalesce_s, clock)
        if coalescer is not None and tick_topic is None:
            raise ValueError("coalescing needs the tick_topic its ticks are sent to")
        if scan_part_rows < 1:
            raise ValueError(f"scan_part_rows must be at least 1, not {scan_part_rows}")
        self.planner = planner
        self.engine = engine
        self.catalog = catalog
        self.planned = planned
        self.held = held if held is not None else {}
        self.send = send
        self.metrics = metrics
        self.render_policy = render_policy
        self.coalescer = coalescer
        self.tick_topic = tick_topic
        self.checkpoint = checkpoint
        self.fanout_topic = fanout_topic
        self.scan_part_rows = scan_part_rows
        self._planned_in = {lane: metrics.requests_planned.labels(lane.value) for lane in Lane}  # one per request

    async def on_product(self, product: ProductCreated, partition: int | None = None) -> None:
        """Store the snapshot (only when it changed) and plan its daily variants. ``partition`` is the input
        record's partition (where a coalesce tick goes; None: the default partitioner's)."""
        snapshot = product.snapshot()
        stored = snapshot.model_dump(mode="json")
        if self.catalog.get(snapshot.sku) != stored:
            self.catalog[snapshot.sku] = stored
        await self.plan_and_send(snapshot, product.event_id, promo=None, partition=partition)

    async def on_promo_target(self, target: PromoTarget, partition: int | None = None) -> None:
        promo = target.promo
        if target.sku is None:
            await self._scan(target, partition)
            return
        stored = self.catalog.get(target.sku)
        if not stored:
            self.metrics.failures.labels(Reason.UNKNOWN_SKU.value).inc()
            log.warning("promo %s names %s, which the catalog does not know", promo.promo_id, target.sku)
            unknown = SkuvidError(f"promo {promo.promo_id} names SKU {target.sku}, which the catalog does not know",
                                  reason=Reason.UNKNOWN_SKU)
            await self.send(VIDEO_FAILED, failed_event(unknown, sku=target.sku, source_event_id=promo.event_id,
                                                       promo_id=promo.promo_id))
            return
        await self.plan_and_send(ProductSnapshot.model_validate(stored), promo.event_id, promo=promo,
                                 partition=partition)

    async def _scan(self, target: PromoTarget, partition: int | None) -> None:
        """One part of a category scan: plan the promo for the products of the promo's categories among the next
        ``scan_part_rows`` rows of the partition, then send the rest of the scan as a new fan-out record."""
        promo = target.promo
        assert target.scan_partition is not None
        wanted = set().union(*(category_keys(self.engine, c) for c in promo.categories))
        listed = set(promo.skus)  # already targeted one by one
        matches: dict[str, bool] = {}  # category -> in the promo (a catalog has few distinct categories)
        rows = planned = 0
        for sku, stored in catalog_partition(self.catalog, target.scan_partition, after=target.after):
            if self.fanout_topic is not None and rows == self.scan_part_rows:
                rest = PromoTarget(promo=promo, scan_partition=target.scan_partition, after=last)
                await self.send(self.fanout_topic, rest, partition=target.scan_partition)
                return
            rows, last = rows + 1, sku
            if not stored or sku in listed:
                continue
            category = stored["category"]
            hit = matches.get(category)
            if hit is None:
                hit = matches[category] = bool(category_keys(self.engine, category) & wanted)
            if not hit:
                continue
            await self.plan_and_send(ProductSnapshot.model_validate(stored), promo.event_id, promo=promo,
                                     partition=partition)
            planned += 1
            if self.checkpoint is not None and planned % SCAN_CHECKPOINT_EVERY == 0:
                await self.checkpoint()

    async def plan_and_send(self, snapshot: ProductSnapshot, source_event_id: str, promo: PromoStarted | None,
                            partition: int | None = None) -> None:
        plan = self.planner.plan(snapshot, source_event_id=source_event_id, promo=promo)
        for failed in plan.failures:
            self.metrics.failures.labels(failed.reason.value).inc()
            await self.send(VIDEO_FAILED, failed)
        for request in plan.requests:
            slot = f"{request.sku}|{request.variant_id}"
            if self.planned.get(slot) == request.request_key:
                self.metrics.requests_deduplicated.inc()
                continue
            dispatched = dispatches_now(self.render_policy, request)
            if dispatched and await self._coalesced(slot, request, partition):
                self.planned[slot] = request.request_key
                continue
            await self._record(slot, request, dispatched)
            self.planned[slot] = request.request_key

    async def on_tick(self, tick: CoalesceTick) -> None:
        """Send the newest plan held for ``tick.slot``, unless none is held any more or the slot was sent less
        than a window ago (then the tick of the newest held plan, due later, sends it). The service has waited
        until ``tick.due``."""
        stored = self.held.get(tick.slot)
        if not stored or (self.coalescer is not None and self.coalescer.last_sent(tick.slot) is not None):
            return
        del self.held[tick.slot]
        request = VideoRequested.model_validate(stored)
        await self._record(tick.slot, request, dispatched=True)

    async def _record(self, slot: str, request: VideoRequested, dispatched: bool) -> None:
        """Send ``request`` to its lane when ``dispatched``, and record the plan on ``video.planned``."""
        if dispatched:
            await self.send(request_topic(request.lane), request)
            self._planned_in[request.lane].inc()
            if self.coalescer is not None:
                self.coalescer.sent(slot, request.request_key)
        await self.send(VIDEO_PLANNED, planned_event(request, dispatched=dispatched), key=slot.encode())

    async def _coalesced(self, slot: str, request: VideoRequested, partition: int | None) -> bool:
        """Whether ``request`` is held back because ``slot`` was sent to a render lane less than a window ago.
        A held plan replaces any plan held for the slot and sends a tick due a window later (every hold does:
        whatever was lost in a crash, the newest held plan always has a tick after it); a plan equal to the one
        last sent just drops the held one. A plan sent at once drops the held one too (it is older)."""
        if self.coalescer is None:
            return False
        last = self.coalescer.last_sent(slot)
        if last is None:
            if self.held.get(slot):
                del self.held[slot]
            return False
        if request.request_key == last[1]:
            if self.held.get(slot):
                del self.held[slot]
            return True
        self.held[slot] = request.model_dump(mode="json")
        assert self.tick_topic is not None
        tick = CoalesceTick(slot=slot, due=self.coalescer.clock() + self.coalescer.window_s)
        kwargs = {} if partition is None else {"partition": partition}
        await self.send(self.tick_topic, tick, key=request.sku.encode(), **kwargs)
        log.debug("holding %s (%s) until %.0f", slot, request.request_key[:12], tick.due)
        return True


def catalog_partition(catalog: Mapping, partition: int, after: str | None = None) -> Iterator[tuple[str, Any]]:
    """(sku, stored snapshot) of every product in one catalog partition, in a fixed order, from the first after SKU
    ``after``: that partition's store alone on a planner table (``consumers.planner_tables.Table``: key order),
    otherwise (a dict in tests) every entry ``owns`` keeps, by SKU."""
    partition_items = getattr(catalog, "partition_items", None)
    if partition_items is not None:
        yield from partition_items(partition, after=after)
        return
    for sku, stored in sorted(catalog.items()):
        if owns(sku, partition) and (after is None or sku > after):
            yield sku, stored


def promo_targets(promo: PromoStarted) -> list[tuple[bytes | None, int | None, PromoTarget]]:
    """(key, partition, record) of each fan-out record: one per listed SKU, one category scan per partition."""
    targets: list[tuple[bytes | None, int | None, PromoTarget]] = [
        (sku.encode(), None, PromoTarget(promo=promo, sku=sku)) for sku in dict.fromkeys(promo.skus)
    ]
    if promo.categories:
        targets += [(None, p, PromoTarget(promo=promo, scan_partition=p)) for p in range(CATALOG_PARTITIONS)]
    return targets


# --- delivery: outputs appended into producer batches, handed over before the input is acknowledged -------


class Outbox:
    """Output records appended into one aiokafka record batch per topic partition, instead of one
    ``producer.send`` (a future and a task step each) per record.

    ``append`` (or ``await add``) puts a record into its partition's open batch; ``await flush()`` hands every
    batch to the producer; ``take_sent()`` gives the batches handed over since the last call, for
    ``acknowledged``: wait for that before committing the input that produced them. A batch the broker does not
    acknowledge (after the producer's retries) calls ``on_undelivered``, which must stop the process before
    anything later is committed.

    Keys are partitioned like the producer's default partitioner (murmur2 of the key; random without a key),
    over the partition counts in ``partitions``.
    """

    def __init__(self, producer: Callable[[], Any], partitions: Mapping[str, int],
                 on_undelivered: Callable[[str, int, BaseException], None]) -> None:
        self._producer = producer  # returns the started aiokafka producer
        self._partitions = partitions
        self._on_undelivered = on_undelivered
        self._open: dict[tuple[str, int], Any] = {}
        self._full: list[tuple[tuple[str, int], Any]] = []
        self._sent: list[SentBatch] = []

    def partition_for(self, topic: str, key: bytes | None) -> int:
        count = self._partitions[topic]
        if key is None:
            return random.randrange(count)
        return partition_for(key, count)

    def append(self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]],
               partition: int | None = None) -> None:
        tp = (topic, self.partition_for(topic, key) if partition is None else partition)
        batch = self._open.get(tp)
        if batch is None:
            batch = self._open[tp] = self._producer().create_batch()
        if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:  # full: the next one
            self._full.append((tp, batch))
            batch = self._open[tp] = self._producer().create_batch()
            if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
                size = len(value or b"")
                raise ValueError(f"a {size}-byte record to {topic} does not fit an empty producer batch")

    async def add(self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]],
                  partition: int | None = None) -> None:
        self.append(topic, key, value, headers, partition)
        if self._full:
            await self._submit_full()

    async def flush(self) -> None:
        await self._submit_full()
        while self._open:
            tp, batch = self._open.popitem()
            await self._submit(tp, batch)

    def take_sent(self) -> list[SentBatch]:
        """The batches handed to the producer since the last call."""
        sent, self._sent = self._sent, []
        return sent

    async def _submit_full(self) -> None:
        while self._full:  # in order, and before any open batch of the same partition
            tp, batch = self._full.pop(0)
            await self._submit(tp, batch)

    async def _submit(self, tp: tuple[str, int], batch: Any) -> None:
        topic, partition = tp
        count = batch.record_count()
        future = await self._producer().send_batch(batch, topic, partition=partition)
        future.add_done_callback(lambda f: self._delivered(topic, partition, f))
        self._sent.append(SentBatch(topic, partition, count, future))

    def _delivered(self, topic: str, partition: int, future: asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is not None:  # cancelled: the producer stopped
            self._on_undelivered(topic, partition, future.exception())


@dataclass(frozen=True, slots=True)
class SentBatch:
    """A record batch handed to the producer: ``count`` records to ``topic[partition]``, acknowledged when
    ``future`` is done (its result's ``offset`` is the batch's first)."""

    topic: str
    partition: int
    count: int
    future: asyncio.Future


async def acknowledged(sent: list[SentBatch]) -> dict[tuple[str, int], int]:
    """Wait for the broker's acknowledgement of every batch in ``sent``; the offset of the last record of each
    topic partition. Raises the first failure."""
    last: dict[tuple[str, int], int] = {}
    for batch, result in zip(sent, await asyncio.gather(*(b.future for b in sent), return_exceptions=True),
                             strict=True):
        if isinstance(result, BaseException):
            raise result
        tp = (batch.topic, batch.partition)
        last[tp] = max(last.get(tp, -1), result.offset + batch.count - 1)
    return last


class RecordEncoder:
    """``encode_value``, with the ``video.planned`` record of a request built around the request's own JSON
    (``PlannerFlow`` sends the request, then its plan: the request is serialised once, not twice). The request is
    written by pydantic's serializer straight to JSON (the same bytes as ``encode_value``, a third cheaper)."""

    def __init__(self) -> None:
        self._last: tuple[VideoRequested, bytes] | None = None

    def __call__(self, event: BaseModel) -> bytes:
        if type(event) is VideoPlanned and self._last is not None and self._last[0] is event.request:
            return orjson.dumps({"schema_version": event.schema_version, "event_id": event.event_id,
                                 "occurred_at": orjson.Fragment(_DATETIME_JSON(event.occurred_at)),
                                 "request": orjson.Fragment(self._last[1]), "dispatched": event.dispatched})
        if type(event) is VideoRequested:
            doc = event.__pydantic_serializer__.to_json(event)
            self._last = (event, doc)
            return doc
        return orjson.dumps(event.model_dump(mode="json"))


_DATETIME_JSON = TypeAdapter(datetime).dump_json  # a datetime as pydantic writes it in JSON


def exit_undelivered(topic: str, partition: int, exc: BaseException) -> None:
    """A planner output the broker never acknowledged: exit now, in this callback, before the planner can commit
    an offset past it; the restarted planner plans the uncommitted input again (at-least-once)."""
    log.critical("planner output to %s[%d] was not acknowledged (%r): exiting so the input is planned again",
                 topic, partition, exc)
    logging.shutdown()
    os._exit(EXIT_UNDELIVERED)
