"""The planner service (faust-streaming): catalog and promo events in, ``video.requested`` out.

State lives in two changelog-backed tables partitioned like the product topics (by SKU):
``catalog`` (sku -> latest snapshot) and ``planned`` (sku/variant -> last request key, for dedup).

Promo fan-out stays partition-local: ``promo.started`` (one partition) is re-keyed onto the internal
``skuvid-planner-promo-fanout`` topic, co-partitioned with the catalog: one record per listed SKU, and one
"category scan" record per partition, which each owner answers from its own part of the catalog table.

Messages sent inside an agent are attached to the event being processed; at-least-once faust publishes them
and waits for the broker's acknowledgement before it commits that event's offset.
"""

from __future__ import annotations

import logging

import faust
from aiokafka.partitioner import DefaultPartitioner
from pydantic import BaseModel

from consumers.dead_letter import dead_letter
from consumers.planning import Planner
from inference.prompt import PromptEngine
from schemas.codec import DecodeError, ce_headers, decode, encode_value, record_key
from schemas.events import ProductCreated, ProductSnapshot, PromoStarted, Reason
from schemas.topics import (
    DEAD_LETTER,
    PRODUCT_CREATED,
    PRODUCT_UPDATED,
    PROMO_STARTED,
    VIDEO_FAILED,
    REQUEST_TOPICS,
    Topic,
    request_topic,
)
from skuvid.metrics import Metrics
from skuvid.settings import Settings

log = logging.getLogger(__name__)

FANOUT_TOPIC = "skuvid-planner-promo-fanout"
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


def create_app(settings: Settings, engine: PromptEngine, metrics: Metrics) -> faust.App:
    app = faust.App(
        settings.planner_group,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")],
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
    planner = Planner(engine, settings)
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    products = app.topic(PRODUCT_CREATED.name, PRODUCT_UPDATED.name, **raw)
    promos = app.topic(PROMO_STARTED.name, **raw)
    fanout = app.topic(FANOUT_TOPIC, partitions=CATALOG_PARTITIONS, internal=True, **raw)
    out = {t.name: app.topic(t.name, **raw) for t in (*REQUEST_TOPICS, VIDEO_FAILED, DEAD_LETTER)}
    json_schema = faust.Schema(key_serializer="json", value_serializer="json")
    catalog = app.Table("catalog", default=None, partitions=CATALOG_PARTITIONS, schema=json_schema)
    planned = app.Table("planned", default=None, partitions=CATALOG_PARTITIONS, schema=json_schema)

    async def send(topic: Topic, event: BaseModel) -> None:
        await out[topic.name].send(key=record_key(event), value=encode_value(event), headers=ce_headers(topic, event))

    async def send_dead_letter(message, exc: DecodeError) -> None:
        metrics.dead_letters.labels(exc.reason.value).inc()
        log.warning("dead-lettering %s[%d]@%d: %s", message.topic, message.partition, message.offset, exc.message)
        record = dead_letter(
            topic=message.topic, partition=message.partition, offset=message.offset,
            key=message.key, value=message.value, reason=exc.reason, message=exc.message,
        )
        await send(DEAD_LETTER, record)

    async def plan_and_send(snapshot: ProductSnapshot, source_event_id: str, promo: PromoStarted | None) -> None:
        plan = planner.plan(snapshot, source_event_id=source_event_id, promo=promo)
        for failed in plan.failures:
            metrics.failures.labels(failed.reason.value).inc()
            await send(VIDEO_FAILED, failed)
        for request in plan.requests:
            slot = f"{request.sku}|{request.variant_id}"
            if planned.get(slot) == request.request_key:
                metrics.requests_deduplicated.inc()
                continue
            await send(request_topic(request.lane), request)
            planned[slot] = request.request_key
            metrics.requests_planned.labels(request.lane.value).inc()

    async def decoded(message) -> BaseModel | None:
        """The record's event, or None once it has been dead-lettered."""
        metrics.events_consumed.labels(message.topic).inc()
        try:
            return decode(message.topic, message.value, max_bytes=settings.max_payload_bytes)
        except DecodeError as exc:
            await send_dead_letter(message, exc)
            return None

    @app.agent(products)
    async def on_product(stream):
        async for event in stream.events():
            message = event.message
            product = await decoded(message)
            if product is None:
                continue
            assert isinstance(product, ProductCreated)
            snapshot = product.snapshot()
            catalog[snapshot.sku] = snapshot.model_dump(mode="json")
            try:
                await plan_and_send(snapshot, product.event_id, promo=None)
            except Exception as exc:  # noqa: BLE001 - a planner bug must not lose the event: park it, replayable
                log.exception("planning %s failed", snapshot.sku)
                await send_dead_letter(message, DecodeError(Reason.INTERNAL_ERROR, f"planning failed: {exc!r}"))

    @app.agent(promos)
    async def on_promo(stream):
        async for event in stream.events():
            promo = await decoded(event.message)
            if promo is None:
                continue
            assert isinstance(promo, PromoStarted)
            for sku in dict.fromkeys(promo.skus):
                await fanout.send(key=sku.encode(), value=PromoTarget(promo=promo, sku=sku).model_dump_json().encode())
            if promo.categories:
                for partition in range(CATALOG_PARTITIONS):
                    target = PromoTarget(promo=promo, scan_partition=partition)
                    await fanout.send(key=None, partition=partition, value=target.model_dump_json().encode())

    @app.agent(fanout)
    async def on_promo_target(stream):
        async for value in stream:
            target = PromoTarget.model_validate_json(value)
            for snapshot in matching_products(target):
                await plan_and_send(snapshot, target.promo.event_id, promo=target.promo)

    def matching_products(target: PromoTarget) -> list[ProductSnapshot]:
        promo = target.promo
        if target.sku is not None:
            stored = catalog.get(target.sku)
            return [ProductSnapshot.model_validate(stored)] if stored else []
        wanted = set().union(*(category_keys(engine, c) for c in promo.categories))
        listed = set(promo.skus)  # already targeted one by one
        return [
            ProductSnapshot.model_validate(stored)
            for sku, stored in list(catalog.items())
            if stored and sku not in listed and owns(sku, target.scan_partition)
            and category_keys(engine, stored["category"]) & wanted
        ]

    return app


def run_planner(settings: Settings) -> None:
    """Run the planner worker until SIGINT/SIGTERM (faust drains and commits on the way out)."""
    metrics = Metrics()
    metrics.serve(settings.metrics_port)
    engine = PromptEngine.load(absolute_terms_policy=settings.absolute_terms_policy)
    app = create_app(settings, engine, metrics)
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), override_logging=False)
    worker.execute_from_commandline()
