"""The planner service (faust-streaming): catalog and promo events in, ``video.requested`` out.

State lives in three changelog-backed tables partitioned like the product topics (by SKU), on RocksDB
(``Settings.planner_store``; memory only for tests that ask for it): ``catalog`` (sku -> latest snapshot),
``planned`` (sku|variant -> last request key, for dedup) and ``held`` (sku|variant -> a request held back by
the update-storm window, see below).

Promo fan-out stays partition-local: ``promo.started`` (one partition) is re-keyed onto the internal
``<group>-promo-fanout`` topic, co-partitioned with the catalog: one record per listed SKU, and one
"category scan" record per partition, which each owner answers from its own part of the catalog table (on
RocksDB: that partition's database only). A listed SKU the catalog does not know gets ``video.failed`` with
reason ``unknown_sku``.

Every planned request is also recorded on the compacted ``video.planned`` topic (keyed ``sku|variant_id``),
which the listing API's video index reads. ``Settings.render_policy`` decides which requests are sent to a
render lane at once (``dispatches_now``); the others (lazy, or the long tail under auto) are only recorded
there, and the API sends them on the listing's first view.

Update storms are coalesced here, before any GPU time is spent (``Coalescer``): a SKU variant is sent to a
render lane at most once per ``Settings.planner_coalesce_s``. A newer plan inside that window is held (``held``
table, the newest replaces the older) and a tick record on the internal ``<group>-coalesce`` topic, due when
the window closes, sends the newest held plan then: 20 updates in 10 s render two videos, the first version
and the last. Held plans are recorded on ``video.planned`` when they are sent, never before.

Delivery: the product agent takes events in batches (``Stream.take_events``). Every agent appends its output
records — and the tables' changelog records (``BatchedTable``) — into producer record batches (one ``Outbox``
for the app, so a partition's records keep the order they were written in) and hands them to faust's producer
before faust acknowledges the events they came from; at-least-once faust flushes the producer (waits for
acks=all) before it commits an offset. An output the broker never acknowledges ends the process (exit 1)
before anything after it is committed, so the uncommitted input is planned again after the restart.

The agents are thin: decode, then ``PlannerFlow`` (plain Python over mappings, unit-testable without a
broker), with every error classified by ``skuvid.errors.classify``: an undecodable record is dead-lettered,
a planning bug becomes ``video.failed`` (``internal_error``) for that product, never a decode error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import faust
import orjson
from aiokafka.partitioner import DefaultPartitioner, murmur2
from pydantic import BaseModel

from consumers.lag import faust_lag, report_lag
from consumers.outcomes import dead_letter, failed_event
from consumers.planning import Planner
from inference.prompt import PromptEngine
from schemas.codec import ce_headers, decode, record_key
from schemas.events import Lane, ProductCreated, ProductSnapshot, PromoStarted, Reason, VideoPlanned, VideoRequested
from schemas.topics import (
    DEAD_LETTER,
    INPUT_TOPICS,
    PRODUCT_CREATED,
    PRODUCT_UPDATED,
    PROMO_STARTED,
    VIDEO_FAILED,
    VIDEO_PLANNED,
    REQUEST_TOPICS,
    Topic,
    request_topic,
)
from skuvid.brokers import BrokerError, ensure_topics
from skuvid.errors import FatalError, Outcome, SkuvidError, classify
from skuvid.kafka_clients import bootstrap_list, faust_app_options, security_options
from skuvid.health import HealthServer, LoopHeartbeat, Readiness
from skuvid.logs import bind_event, bind_record
from skuvid.metrics import Metrics
from skuvid.settings import Settings

log = logging.getLogger(__name__)

CATALOG_PARTITIONS = PRODUCT_CREATED.partitions
EXIT_UNDELIVERED = 1
SCAN_CHECKPOINT_EVERY = 256  # a category scan hands its outputs to the producer and yields this often


class PromoTarget(BaseModel):
    """Internal fan-out record: a promo for one SKU, or a category scan of one catalog partition."""

    promo: PromoStarted
    sku: str | None = None
    scan_partition: int | None = None


class CoalesceTick(BaseModel):
    """Internal record: send the newest held plan of ``slot`` once ``due`` (epoch seconds) has passed."""

    slot: str
    due: float


def owns(sku: str, partition: int) -> bool:
    """Whether ``sku``'s records land in ``partition`` (Kafka's default murmur2 partitioner)."""
    parts = list(range(CATALOG_PARTITIONS))
    return DefaultPartitioner()(sku.encode(), parts, parts) == partition


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
    """The internal promo fan-out topic of this planner group (one per group, like faust's changelogs)."""
    return f"{settings.planner_group}-promo-fanout"


def coalesce_topic(settings: Settings) -> str:
    """The internal topic of update-storm ticks (co-partitioned with the catalog, one per group)."""
    return f"{settings.planner_group}-coalesce"


def changelog_topics(settings: Settings) -> list[str]:
    """The changelog topics faust keeps for the planner's tables (``<app id>-<table>-changelog``)."""
    return [f"{settings.planner_group}-{table}-changelog" for table in TABLES]


TABLES = ("catalog", "planned", "held")


def ensure_planner_topics(settings: Settings) -> None:
    """Create (or verify) every topic the planner reads or writes — inputs, outputs, its changelogs and its
    internal topics, with their partition counts — before any agent starts: faust otherwise meets a missing
    changelog on its first assignment and fails writes with ``PartitionsMismatch``. Raises ``FatalError``
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
    """When each SKU variant was last sent to a render lane (the update-storm window), shared by every agent of
    a planner: slot -> (when, request key) for the last ``window_s`` seconds, by ``clock`` (epoch seconds).

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
    request key, ``held``: sku|variant -> request JSON), free of faust: the agents call it with faust tables,
    tests with dicts.

    ``coalescer`` (or ``coalesce_s`` > 0 and ``clock``: one of its own) turns on the update-storm window (module
    doc); ``tick_topic`` is the topic its ticks go to. ``checkpoint`` is awaited every ``SCAN_CHECKPOINT_EVERY``
    products of a category scan (the agent hands outputs to the producer there and lets the event loop run)."""

    def __init__(self, planner: Planner, engine: PromptEngine, catalog: MutableMapping, planned: MutableMapping,
                 send: Send, metrics: Metrics, render_policy: str = "eager", *,
                 held: MutableMapping | None = None, coalesce_s: float = 0.0, tick_topic: Topic | None = None,
                 clock: Callable[[], float] = time.time, coalescer: Coalescer | None = None,
                 checkpoint: Callable[[], Awaitable[None]] | None = None) -> None:
        if coalescer is None and coalesce_s > 0:
            coalescer = Coalescer(coalesce_s, clock)
        if coalescer is not None and tick_topic is None:
            raise ValueError("coalescing needs the tick_topic its ticks are sent to")
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
        if target.sku is not None and not self.catalog.get(target.sku):
            self.metrics.failures.labels(Reason.UNKNOWN_SKU.value).inc()
            log.warning("promo %s names %s, which the catalog does not know", promo.promo_id, target.sku)
            unknown = SkuvidError(f"promo {promo.promo_id} names SKU {target.sku}, which the catalog does not know",
                                  reason=Reason.UNKNOWN_SKU)
            await self.send(VIDEO_FAILED, failed_event(unknown, sku=target.sku, source_event_id=promo.event_id,
                                                       promo_id=promo.promo_id))
            return
        for n, snapshot in enumerate(self.matching_products(target), start=1):
            await self.plan_and_send(snapshot, promo.event_id, promo=promo, partition=partition)
            if self.checkpoint is not None and n % SCAN_CHECKPOINT_EVERY == 0:
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
        than a window ago (then the tick of the newest held plan, due later, sends it). The agent has waited
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
            self.metrics.requests_planned.labels(request.lane.value).inc()
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

    def matching_products(self, target: PromoTarget) -> Iterator[ProductSnapshot]:
        promo = target.promo
        if target.sku is not None:
            stored = self.catalog.get(target.sku)
            if stored:
                yield ProductSnapshot.model_validate(stored)
            return
        wanted = set().union(*(category_keys(self.engine, c) for c in promo.categories))
        listed = set(promo.skus)  # already targeted one by one
        matches: dict[str, bool] = {}  # category -> in the promo (a catalog has few distinct categories)
        assert target.scan_partition is not None
        for sku, stored in catalog_partition(self.catalog, target.scan_partition):
            if not stored or sku in listed:
                continue
            category = stored["category"]
            hit = matches.get(category)
            if hit is None:
                hit = matches[category] = bool(category_keys(self.engine, category) & wanted)
            if hit:
                yield ProductSnapshot.model_validate(stored)


def catalog_partition(catalog: Mapping, partition: int) -> Iterator[tuple[str, Any]]:
    """(sku, stored snapshot) of every product in one catalog partition. On a RocksDB-backed faust table that
    is that partition's database alone (read through one consistent iterator); otherwise (memory store, a
    dict) every entry, filtered by ``owns``."""
    store = getattr(catalog, "data", None)
    db = _rocksdb_partition(store, partition)
    if db is not None:
        offset_key = store.offset_key
        for key, value in db.items():
            if key != offset_key and value is not None:
                yield orjson.loads(key), orjson.loads(value)
        return
    for sku, stored in list(catalog.items()):
        if owns(sku, partition):
            yield sku, stored


def _rocksdb_partition(store: Any, partition: int) -> Any:
    from faust.stores.rocksdb import Store as RocksDBStore  # noqa: PLC0415 - only with a faust table

    if isinstance(store, RocksDBStore):
        return store._db_for_partition(partition)  # one database per partition (faust-streaming 0.15)
    return None


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
    ``producer.send`` (and faust's per-message bookkeeping) per record.

    ``append`` (or ``await add``) puts a record into its partition's open batch; ``await flush()`` hands every
    batch to the producer. Call ``flush`` before the input events that produced the records are acknowledged:
    faust's at-least-once commit then waits for them (it flushes the producer, which waits for acks=all). A
    batch the broker does not acknowledge (after the producer's retries) calls ``on_undelivered``, which must
    stop the process before anything later is committed. ``on_delivered[topic](partition, last_offset)`` is
    called for every acknowledged batch of ``topic`` (the table changelogs' persisted offsets).

    Keys are partitioned like the producer's default partitioner (murmur2 of the key; random without a key),
    over the partition counts in ``partitions``.
    """

    def __init__(self, producer: Callable[[], Any], partitions: Mapping[str, int],
                 on_undelivered: Callable[[str, int, BaseException], None],
                 on_delivered: Mapping[str, Callable[[int, int], None]] | None = None) -> None:
        self._producer = producer  # returns the started aiokafka producer
        self._partitions = partitions
        self._on_undelivered = on_undelivered
        self._on_delivered = dict(on_delivered or {})
        self._open: dict[tuple[str, int], Any] = {}
        self._full: list[tuple[tuple[str, int], Any]] = []

    def partition_for(self, topic: str, key: bytes | None) -> int:
        count = self._partitions[topic]
        if key is None:
            return random.randrange(count)
        return (murmur2(key) & 0x7FFFFFFF) % count

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

    def when_delivered(self, topic: str, hook: Callable[[int, int], None]) -> None:
        self._on_delivered[topic] = hook

    async def _submit_full(self) -> None:
        while self._full:  # in order, and before any open batch of the same partition
            tp, batch = self._full.pop(0)
            await self._submit(tp, batch)

    async def _submit(self, tp: tuple[str, int], batch: Any) -> None:
        topic, partition = tp
        count = batch.record_count()
        future = await self._producer().send_batch(batch, topic, partition=partition)
        future.add_done_callback(lambda f: self._delivered(topic, partition, count, f))

    def _delivered(self, topic: str, partition: int, count: int, future: asyncio.Future) -> None:
        if future.cancelled():
            return  # the producer stopped: nothing after it was committed
        exc = future.exception()
        if exc is not None:
            self._on_undelivered(topic, partition, exc)
            return
        hook = self._on_delivered.get(topic)
        if hook is not None:
            hook(partition, future.result().offset + count - 1)


class BatchedTable:
    """A faust table as the mapping ``PlannerFlow`` needs, with its changelog records sent through an ``Outbox``
    (faust's own table writes send one message each through its producer buffer).

    Reads and writes go to the table's store (RocksDB: the current event's partition database); a write also
    appends the changelog record — the key and value bytes faust itself would send (its ``json`` codec is
    orjson with these options), to the current event's partition — and, once the broker acknowledged it, the
    store remembers that offset, as faust does, so a restart reads only the changelog written after it."""

    def __init__(self, table: Any, outbox: Outbox) -> None:
        from faust.stores.base import SerializedStore  # noqa: PLC0415 - only with a faust table

        if table.key_serializer != "json" or table.value_serializer != "json":
            raise ValueError(f"table {table.name}: BatchedTable writes the json codec's bytes only")
        self.table = table
        self.data = table.data
        self.outbox = outbox
        self.topic = table.changelog_topic.get_topic_name()
        self._serialized = isinstance(self.data, SerializedStore)

    def get(self, key: Any, default: Any = None) -> Any:
        store = self.data
        if not self._serialized:
            return store.data.get(key, default)
        raw = store._get(_json(key))
        return default if raw is None else orjson.loads(raw)

    def __setitem__(self, key: Any, value: Any) -> None:
        store = self.data
        key_bytes, value_bytes = _json(key), _json(value)
        if self._serialized:
            store._set(key_bytes, value_bytes)
        else:
            store[key] = value
        self.outbox.append(self.topic, key_bytes, value_bytes, [], _current_partition())

    def __delitem__(self, key: Any) -> None:
        store = self.data
        key_bytes = _json(key)
        if self._serialized:
            store._del(key_bytes)
        else:
            del store[key]
        self.outbox.append(self.topic, key_bytes, None, [], _current_partition())

    def items(self) -> Any:
        return self.table.items()

    def persisted(self, partition: int, offset: int) -> None:
        """``Outbox`` hook: the changelog is acknowledged up to ``offset`` in ``partition``."""
        from faust.types import TP  # noqa: PLC0415

        self.data.set_persisted_offset(TP(self.topic, partition), offset)


def _json(value: Any) -> bytes:
    """What faust's ``json`` codec writes (``faust.utils.json.dumps`` with orjson installed)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z)


def _current_partition() -> int:
    from faust.streams import current_event  # noqa: PLC0415

    event = current_event()
    if event is None:
        raise RuntimeError("a planner table was written outside of an event")
    return event.message.partition


class RecordEncoder:
    """``encode_value``, with the ``video.planned`` record of a request built around the request's own JSON
    (``PlannerFlow`` sends the request, then its plan: the request is serialised once, not twice)."""

    def __init__(self) -> None:
        self._last: tuple[VideoRequested, dict] | None = None

    def __call__(self, event: BaseModel) -> bytes:
        if type(event) is VideoPlanned and self._last is not None and self._last[0] is event.request:
            request = self._last[1]
            return orjson.dumps({"schema_version": event.schema_version, "event_id": event.event_id,
                                 "occurred_at": request["occurred_at"], "request": request,
                                 "dispatched": event.dispatched})
        doc = event.model_dump(mode="json")
        if type(event) is VideoRequested:
            self._last = (event, doc)
        return orjson.dumps(doc)


def exit_undelivered(topic: str, partition: int, exc: BaseException) -> None:
    """A planner output the broker never acknowledged: exit now, in this callback, before faust can commit
    an offset past it; the restarted planner plans the uncommitted input again (at-least-once)."""
    log.critical("planner output to %s[%d] was not acknowledged (%r): exiting so the input is planned again",
                 topic, partition, exc)
    logging.shutdown()
    os._exit(EXIT_UNDELIVERED)


def _faust_producer(app: faust.App) -> Callable[[], Any]:
    """The aiokafka producer under faust's (the one faust flushes before it commits), once started."""
    return lambda: app.producer._ensure_producer()  # faust-streaming 0.15: no public accessor


def _as_current(event: Any) -> None:
    """Make ``event`` the current event of this agent's task: faust's table writes go to its partition.

    ``take_events`` buffers events in another task, so this task's current event is not any of them. Only the
    task-local context variable is set (faust-streaming 0.15's ``faust.streams._current_event``), not
    ``Stream.current_event``, which the buffering task reads."""
    from faust.streams import _current_event  # noqa: PLC0415 - no public setter

    _current_event.set(weakref.ref(event))


def table_options(settings: Settings) -> dict[str, Any] | None:
    """RocksDB options of each table partition (faust's defaults: a 2 GiB block cache and 3 x 64 MiB memtables
    per partition, which at 18 table partitions is far more memory than the planner needs)."""
    if settings.planner_store != "rocksdb":
        return None
    return {"block_cache_size": settings.planner_rocksdb_cache_mb << 20, "write_buffer_size": 16 << 20,
            "max_write_buffer_number": 2}


CLEAN_STOP_MARKER = "clean-stop"


def planner_datadir(settings: Settings) -> Path:
    """faust's data folder of this planner group: tables under ``v1/tables/<table>-<partition>.db``, with one
    changelog offset per database, so two planner groups never share (or misread) a table."""
    return settings.planner_data_dir / settings.planner_group


def reset_unless_stopped_cleanly(datadir: Path) -> bool:
    """Drop the local RocksDB tables unless the last run stopped cleanly; returns whether it dropped them.

    A table write reaches the local database at once and its changelog record when the outbox is flushed, so
    after a crash (SIGKILL, OOM, an undelivered output) the local ``planned`` table may name requests that
    never reached the broker; trusted, it would deduplicate them away on redelivery. So only a clean stop
    (``mark_stopped_cleanly``: everything written was acknowledged) keeps the tables for a fast restart;
    otherwise they are rebuilt from their changelogs, which hold only what the broker acknowledged."""
    marker, tables = datadir / CLEAN_STOP_MARKER, datadir / "v1" / "tables"
    clean = marker.exists()
    marker.unlink(missing_ok=True)  # from now on a crash leaves no marker
    if clean or not tables.exists():
        return False
    log.warning("the planner did not stop cleanly last time: rebuilding its tables from their changelogs")
    shutil.rmtree(tables)
    return True


def mark_stopped_cleanly(datadir: Path) -> None:
    datadir.mkdir(parents=True, exist_ok=True)
    (datadir / CLEAN_STOP_MARKER).write_text(f"{time.time():.3f}\n")


def create_app(settings: Settings, engine: PromptEngine, metrics: Metrics) -> faust.App:
    datadir = planner_datadir(settings)
    if settings.planner_store == "rocksdb":
        reset_unless_stopped_cleanly(datadir)
    datadir.mkdir(parents=True, exist_ok=True)  # faust makes only the last level
    app = faust.App(
        settings.planner_group,
        **faust_app_options(settings),  # connection, delivery guarantee and timeouts of every skuvid app
        store="rocksdb://" if settings.planner_store == "rocksdb" else "memory://",
        datadir=str(datadir),
        topic_partitions=CATALOG_PARTITIONS,
        producer_max_batch_size=1 if settings.kafka_one_record_batches else 512 * 1024,
        producer_linger=0.005,
        producer_max_request_size=4 * 1_048_576,
        consumer_max_fetch_size=4 * 1_048_576,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
    )
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    products = app.topic(PRODUCT_CREATED.name, PRODUCT_UPDATED.name, **raw)
    promos = app.topic(PROMO_STARTED.name, **raw)
    fanout = app.topic(fanout_topic(settings), partitions=CATALOG_PARTITIONS, internal=True, **raw)
    ticks = app.topic(coalesce_topic(settings), partitions=CATALOG_PARTITIONS, internal=True, **raw)
    json_schema = faust.Schema(key_serializer="json", value_serializer="json")
    catalog, planned, held = (
        app.Table(name, default=None, partitions=CATALOG_PARTITIONS, schema=json_schema,
                  options=table_options(settings))
        for name in TABLES
    )
    tick_topic = Topic(coalesce_topic(settings), CoalesceTick, CATALOG_PARTITIONS, "update-storm ticks")
    partitions = {t.name: t.partitions for t in (*REQUEST_TOPICS, VIDEO_FAILED, DEAD_LETTER, VIDEO_PLANNED,
                                                 tick_topic)}
    partitions[fanout_topic(settings)] = CATALOG_PARTITIONS

    # One outbox for every agent: the records of a partition (a table's changelog, a slot's plans) are appended
    # in the order they were written, whichever agent wrote them.
    box = Outbox(_faust_producer(app), partitions, exit_undelivered)
    coalescer = Coalescer(settings.planner_coalesce_s) if settings.planner_coalesce_s > 0 else None
    planner = Planner(engine, settings)  # shared: the fan-out builds from the analyses the product agent kept
    batched: list[BatchedTable] = []

    def sender() -> Send:
        encode = RecordEncoder()

        async def send(topic: Topic, event: BaseModel, key: bytes | None = None, partition: int | None = None):
            await box.add(topic.name, key if key is not None else record_key(event), encode(event),
                          ce_headers(topic, event), partition)

        return send

    async def checkpoint() -> None:
        await box.flush()
        await asyncio.sleep(0)

    def new_flow() -> tuple[PlannerFlow, Send]:
        """A flow for one agent (called when it starts: faust has made the tables' stores by then)."""
        if not batched:
            batched.extend(BatchedTable(table, box) for table in (catalog, planned, held))
            for table in batched:
                box.when_delivered(table.topic, table.persisted)
                partitions[table.topic] = CATALOG_PARTITIONS
        send = sender()
        batched_catalog, batched_planned, batched_held = batched
        flow = PlannerFlow(planner, engine, batched_catalog, batched_planned, send, metrics,
                           render_policy=settings.render_policy, held=batched_held, coalescer=coalescer,
                           tick_topic=tick_topic, checkpoint=checkpoint)
        return flow, send

    async def settle(send: Send, message, exc: Exception, sku: str | None, source_event_id: str | None) -> None:
        """What ``exc`` means for this record: dead letter, video.failed, or (transient, fatal) re-raise so
        faust does not commit the offset and the process restarts on it."""
        failure = classify(exc)
        where = f"{message.topic}[{message.partition}]@{message.offset}"
        if failure.outcome is Outcome.DEAD_LETTER:
            metrics.dead_letters.labels(failure.reason.value).inc()
            log.warning("dead-lettering %s: %s", where, failure.message)
            await send(DEAD_LETTER, dead_letter(
                topic=message.topic, partition=message.partition, offset=message.offset,
                key=message.key, value=message.value, reason=failure.reason, message=failure.message,
            ))
        elif failure.outcome is Outcome.FAILED:
            log.error("planning %s (%s) failed: %s", sku, where, failure.message, exc_info=exc)
            metrics.failures.labels(failure.reason.value).inc()
            await send(VIDEO_FAILED, failed_event(failure, sku=sku, source_event_id=source_event_id))
        else:
            raise exc

    @app.on_before_shutdown.connect
    async def stopped(sender, **kwargs) -> None:
        """faust has stopped fetching and every agent has finished its events: send what is left, wait for the
        acknowledgements, and only then say the local tables match their changelogs."""
        await box.flush()
        await app.producer.flush()
        if settings.planner_store == "rocksdb":
            mark_stopped_cleanly(datadir)

    @app.agent(products)
    async def on_product(stream):
        flow, send = new_flow()
        consumed = {topic: metrics.events_consumed.labels(topic) for topic in (PRODUCT_CREATED.name,
                                                                              PRODUCT_UPDATED.name)}
        async for events in stream.take_events(settings.planner_batch_max, within=settings.planner_batch_s):
            for event in events:
                _as_current(event)
                message = event.message
                consumed[message.topic].inc()
                product = None
                with bind_record(message):
                    try:
                        product = decode(message.topic, message.value, max_bytes=settings.max_payload_bytes)
                        assert isinstance(product, ProductCreated)
                        bind_event(product)
                        await flow.on_product(product, partition=message.partition)
                    except Exception as exc:  # noqa: BLE001 - classified in settle(); nothing is swallowed
                        await settle(send, message, exc, getattr(product, "sku", None),
                                     getattr(product, "event_id", None))
            await box.flush()  # before take_events acknowledges this batch

    @app.agent(promos)
    async def on_promo(stream):
        send = sender()
        async for event in stream.events():
            message = event.message
            metrics.events_consumed.labels(message.topic).inc()
            try:
                promo = decode(message.topic, message.value, max_bytes=settings.max_payload_bytes)
                assert isinstance(promo, PromoStarted)
                for key, partition, target in promo_targets(promo):
                    await box.add(fanout.get_topic_name(), key, target.model_dump_json().encode(), [], partition)
            except Exception as exc:  # noqa: BLE001 - classified in settle()
                await settle(send, message, exc, None, None)
            await box.flush()

    @app.agent(fanout)
    async def on_promo_target(stream):
        flow, send = new_flow()
        async for event in stream.events():
            target = PromoTarget.model_validate_json(event.value)  # written by on_promo: a defect here is a bug
            try:
                await flow.on_promo_target(target, partition=event.message.partition)
            except Exception as exc:  # noqa: BLE001 - classified in settle()
                await settle(send, event.message, exc, target.sku, target.promo.event_id)
            await box.flush()

    @app.agent(ticks)
    async def on_tick(stream):
        flow, _ = new_flow()
        async for event in stream.events():
            tick = CoalesceTick.model_validate_json(event.value)  # written by the planner itself
            wait = tick.due - time.time()
            if wait > 0:  # ticks of a partition come in due order: waiting on the head one delays no other
                await asyncio.sleep(wait)
            await flow.on_tick(tick)
            await box.flush()

    return app


def planner_worker(app: faust.App, settings: Settings, on_stop_signal: Callable[[], None]) -> faust.Worker:
    """faust's worker, with ``on_stop_signal`` called when SIGTERM/SIGINT arrives (the shutdown deadline)."""

    class Worker(faust.Worker):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.spinner = None  # faust's terminal spinner writes cursor escapes into service logs

        def _schedule_shutdown(self, signal) -> None:  # mode.Worker's one entry for both signals
            on_stop_signal()
            super()._schedule_shutdown(signal)

    return Worker(app, loglevel=settings.log_level.lower(), override_logging=False, quiet=True)


def attach_probes(app: faust.App, settings: Settings, metrics: Metrics, server: HealthServer | None) -> None:
    """Liveness (the event loop runs), readiness (group joined, tables recovered) and self-reported consumer
    lag of the planner's source topics."""
    heartbeat = LoopHeartbeat()
    readiness = Readiness("group_joined", "tables_recovered")
    app.task(heartbeat.run)
    sources = [PRODUCT_CREATED.name, PRODUCT_UPDATED.name, PROMO_STARTED.name, fanout_topic(settings),
               coalesce_topic(settings)]

    @app.task
    async def lag() -> None:
        await report_lag(metrics, settings.planner_group, lambda: faust_lag(app, sources))

    @app.on_partitions_assigned.connect
    async def joined(sender, assigned, **kwargs) -> None:
        readiness.set("group_joined", detail=f"{len(assigned)} partitions")

    @app.on_rebalance_complete.connect
    async def recovered(sender, **kwargs) -> None:
        readiness.set("tables_recovered")

    if server is not None:
        server.add_liveness("event_loop", heartbeat.check)
        readiness.register(server)
