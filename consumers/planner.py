"""The planner service (faust-streaming): catalog and promo events in, ``video.requested`` out.

State lives in two changelog-backed tables partitioned like the product topics (by SKU):
``catalog`` (sku -> latest snapshot) and ``planned`` (sku/variant -> last request key, for dedup).

Promo fan-out stays partition-local: ``promo.started`` (one partition) is re-keyed onto the internal
``<group>-promo-fanout`` topic, co-partitioned with the catalog: one record per listed SKU, and one
"category scan" record per partition, which each owner answers from its own part of the catalog table.
A listed SKU the catalog does not know gets ``video.failed`` with reason ``unknown_sku``.

Every planned request is also recorded on the compacted ``video.planned`` topic (keyed ``sku|variant_id``),
which the listing API's video index reads. ``Settings.render_policy`` decides which requests are sent to a
render lane at once (``dispatches_now``); the others (lazy, or the long tail under auto) are only recorded
there, and the API sends them on the listing's first view.

Messages sent inside an agent are attached to the event being processed; at-least-once faust publishes them
and waits for the broker's acknowledgement before it commits that event's offset.

The agents are thin: decode, then ``PlannerFlow`` (plain Python over two mappings, unit-testable without a
broker), with every error classified by ``skuvid.errors.classify``: an undecodable record is dead-lettered,
a planning bug becomes ``video.failed`` (``internal_error``) for that product, never a decode error.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping

import faust
from aiokafka.partitioner import DefaultPartitioner
from pydantic import BaseModel

from consumers.lag import faust_lag, report_lag
from consumers.outcomes import dead_letter, failed_event
from consumers.planning import Planner
from inference.prompt import PromptEngine
from schemas.codec import ce_headers, decode, encode_value, record_key
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
from skuvid.kafka_clients import bootstrap_list, faust_options, security_options
from skuvid.health import HealthServer, LoopHeartbeat, Readiness
from skuvid.logs import bind_event, bind_record
from skuvid.metrics import Metrics
from skuvid.settings import Settings

log = logging.getLogger(__name__)

CATALOG_PARTITIONS = PRODUCT_CREATED.partitions


class PromoTarget(BaseModel):
    """Internal fan-out record: a promo for one SKU, or a category scan of one catalog partition."""

    promo: PromoStarted
    sku: str | None = None
    scan_partition: int | None = None


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


Send = Callable[..., Awaitable[None]]  # send(topic, event, key=None): key None is the event's record key


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


def changelog_topics(settings: Settings) -> list[str]:
    """The changelog topics faust keeps for the planner's tables (``<app id>-<table>-changelog``)."""
    return [f"{settings.planner_group}-{table}-changelog" for table in TABLES]


TABLES = ("catalog", "planned")


def ensure_planner_topics(settings: Settings) -> None:
    """Create (or verify) every topic the planner reads or writes — inputs, outputs, its changelogs and the
    fan-out topic, with their partition counts — before any agent starts: faust otherwise meets a missing
    changelog on its first assignment and fails writes with ``PartitionsMismatch``. Raises ``FatalError``
    when a topic exists with another partition count or cannot be created."""
    outputs = (*REQUEST_TOPICS, VIDEO_FAILED, DEAD_LETTER, VIDEO_PLANNED)
    wanted = {t.name: t.partitions for t in (*INPUT_TOPICS, *outputs)}
    internal = [*changelog_topics(settings), fanout_topic(settings)]
    wanted |= dict.fromkeys(internal, CATALOG_PARTITIONS)
    compact = {"cleanup.policy": "compact"}
    try:
        ensure_topics(",".join(bootstrap_list(settings)), wanted, replication=settings.kafka_replication_factor,
                      configs=dict.fromkeys([*changelog_topics(settings), VIDEO_PLANNED.name], compact),
                      client_options=security_options(settings))
    except BrokerError as exc:
        raise FatalError(f"the planner's topics are not usable: {exc}", reason=Reason.BROKER_UNAVAILABLE) from None


class PlannerFlow:
    """The planner's decisions over its tables (``catalog``: sku -> snapshot JSON, ``planned``: sku|variant ->
    request key), free of faust: the agents call it with faust tables, tests with dicts."""

    def __init__(self, planner: Planner, engine: PromptEngine, catalog: MutableMapping, planned: MutableMapping,
                 send: Send, metrics: Metrics, render_policy: str = "eager") -> None:
        self.planner = planner
        self.engine = engine
        self.catalog = catalog
        self.planned = planned
        self.send = send
        self.metrics = metrics
        self.render_policy = render_policy

    async def on_product(self, product: ProductCreated) -> None:
        snapshot = product.snapshot()
        self.catalog[snapshot.sku] = snapshot.model_dump(mode="json")
        await self.plan_and_send(snapshot, product.event_id, promo=None)

    async def on_promo_target(self, target: PromoTarget) -> None:
        promo = target.promo
        if target.sku is not None and not self.catalog.get(target.sku):
            self.metrics.failures.labels(Reason.UNKNOWN_SKU.value).inc()
            log.warning("promo %s names %s, which the catalog does not know", promo.promo_id, target.sku)
            unknown = SkuvidError(f"promo {promo.promo_id} names SKU {target.sku}, which the catalog does not know",
                                  reason=Reason.UNKNOWN_SKU)
            await self.send(VIDEO_FAILED, failed_event(unknown, sku=target.sku, source_event_id=promo.event_id,
                                                       promo_id=promo.promo_id))
            return
        for snapshot in self.matching_products(target):
            await self.plan_and_send(snapshot, promo.event_id, promo=promo)

    async def plan_and_send(self, snapshot: ProductSnapshot, source_event_id: str, promo: PromoStarted | None) -> None:
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
            if dispatched:
                await self.send(request_topic(request.lane), request)
            await self.send(VIDEO_PLANNED, planned_event(request, dispatched=dispatched), key=slot.encode())
            self.planned[slot] = request.request_key
            if dispatched:
                self.metrics.requests_planned.labels(request.lane.value).inc()

    def matching_products(self, target: PromoTarget) -> list[ProductSnapshot]:
        promo = target.promo
        if target.sku is not None:
            stored = self.catalog.get(target.sku)
            return [ProductSnapshot.model_validate(stored)] if stored else []
        wanted = set().union(*(category_keys(self.engine, c) for c in promo.categories))
        listed = set(promo.skus)  # already targeted one by one
        return [
            ProductSnapshot.model_validate(stored)
            for sku, stored in list(self.catalog.items())
            if stored and sku not in listed and owns(sku, target.scan_partition)
            and category_keys(self.engine, stored["category"]) & wanted
        ]


def promo_targets(promo: PromoStarted) -> list[tuple[bytes | None, int | None, PromoTarget]]:
    """(key, partition, record) of each fan-out record: one per listed SKU, one category scan per partition."""
    targets: list[tuple[bytes | None, int | None, PromoTarget]] = [
        (sku.encode(), None, PromoTarget(promo=promo, sku=sku)) for sku in dict.fromkeys(promo.skus)
    ]
    if promo.categories:
        targets += [(None, p, PromoTarget(promo=promo, scan_partition=p)) for p in range(CATALOG_PARTITIONS)]
    return targets


def create_app(settings: Settings, engine: PromptEngine, metrics: Metrics) -> faust.App:
    app = faust.App(
        settings.planner_group,
        **faust_options(settings),  # broker list and credentials, as every skuvid client connects
        store="memory://",
        datadir=str(settings.planner_data_dir),
        processing_guarantee="at_least_once",
        topic_partitions=CATALOG_PARTITIONS,
        topic_replication_factor=settings.kafka_replication_factor,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        producer_acks=-1,
        producer_max_batch_size=1 if settings.kafka_one_record_batches else 16384,
        producer_max_request_size=4 * 1_048_576,
        producer_request_timeout=settings.kafka_delivery_timeout_ms / 1000,
        consumer_max_fetch_size=4 * 1_048_576,
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.heartbeat_interval_ms / 1000,
        broker_rebalance_timeout=2 * settings.session_timeout_ms / 1000,
        broker_commit_every=100,
        broker_commit_interval=1.0,
        web_enabled=False,
        autodiscover=False,
        topic_allow_declare=True,
    )
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    products = app.topic(PRODUCT_CREATED.name, PRODUCT_UPDATED.name, **raw)
    promos = app.topic(PROMO_STARTED.name, **raw)
    fanout = app.topic(fanout_topic(settings), partitions=CATALOG_PARTITIONS, internal=True, **raw)
    out = {t.name: app.topic(t.name, **raw) for t in (*REQUEST_TOPICS, VIDEO_FAILED, DEAD_LETTER, VIDEO_PLANNED)}
    json_schema = faust.Schema(key_serializer="json", value_serializer="json")
    catalog, planned = (app.Table(name, default=None, partitions=CATALOG_PARTITIONS, schema=json_schema)
                        for name in TABLES)

    async def send(topic: Topic, event: BaseModel, key: bytes | None = None) -> None:
        await out[topic.name].send(key=key if key is not None else record_key(event), value=encode_value(event),
                                   headers=ce_headers(topic, event))

    flow = PlannerFlow(Planner(engine, settings), engine, catalog, planned, send, metrics,
                       render_policy=settings.render_policy)

    async def settle(message, exc: Exception, sku: str | None, source_event_id: str | None) -> None:
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

    @app.agent(products)
    async def on_product(stream):
        async for event in stream.events():
            message = event.message
            metrics.events_consumed.labels(message.topic).inc()
            product = None
            with bind_record(message):
                try:
                    product = decode(message.topic, message.value, max_bytes=settings.max_payload_bytes)
                    assert isinstance(product, ProductCreated)
                    bind_event(product)
                    await flow.on_product(product)
                except Exception as exc:  # noqa: BLE001 - classified in settle(); nothing is swallowed
                    await settle(message, exc, getattr(product, "sku", None), getattr(product, "event_id", None))

    @app.agent(promos)
    async def on_promo(stream):
        async for event in stream.events():
            message = event.message
            metrics.events_consumed.labels(message.topic).inc()
            try:
                promo = decode(message.topic, message.value, max_bytes=settings.max_payload_bytes)
                assert isinstance(promo, PromoStarted)
                for key, partition, target in promo_targets(promo):
                    await fanout.send(key=key, partition=partition, value=target.model_dump_json().encode())
            except Exception as exc:  # noqa: BLE001 - classified in settle()
                await settle(message, exc, None, None)

    @app.agent(fanout)
    async def on_promo_target(stream):
        async for event in stream.events():
            target = PromoTarget.model_validate_json(event.value)  # written by on_promo: a defect here is a bug
            try:
                await flow.on_promo_target(target)
            except Exception as exc:  # noqa: BLE001 - classified in settle()
                await settle(event.message, exc, target.sku, target.promo.event_id)

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
    sources = [PRODUCT_CREATED.name, PRODUCT_UPDATED.name, PROMO_STARTED.name, fanout_topic(settings)]

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
