"""Promo fan-out on real Apache Kafka, side by side with a raw aiokafka producer in the same run.

1. A catalog of ``skus`` products in one category goes in through ``product.created`` into a real planner
   (``skuvid serve --role planner``, RocksDB tables) under render policy ``auto``: these long-tail products are
   planned and recorded on ``video.planned`` but not rendered.
2. ``raw_per_s``: an aiokafka producer (acks=all, idempotent, linger 5 ms, aiokafka's defaults otherwise: no
   compression) sends ``skus`` copies of one real promo request, one ``send`` per record — measured before and
   after the promo, the mean is reported. ``raw_compressed_per_s``: the same producer once more, its batches
   compressed with the planner's codec (``Settings.kafka_compression``; copies of one request compress better
   than distinct requests, so this baseline errs fast).
3. One ``promo.started`` names the category: its fan-out (one category scan per catalog partition, each
   answered from that partition's RocksDB database) plans a promo variant per product and sends it to
   ``video.requested.hot`` (promos go to a lane at once under ``auto``). ``requests_per_s`` is ``skus`` over the
   time from sending the promo to the last of its requests appearing on the topic.
4. ``duplicates``: requests beyond one per SKU for this promo (read back and parsed after the timing);
   ``missing``: SKUs without one.
5. ``cpu_us_per_record``: CPU µs per record of the broker, the planner and this process (``harness``: the raw
   producer, or the promo's producer and the watcher), and how busy the machine was, over the first raw run
   (``raw``) and the fan-out (``fanout``), their clients' start included: ``bench.cpu``.

``python -m bench.fanout [--skus N]`` or ``skuvid bench fanout --json``. Needs the JDK and Maven like the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.cpu import CpuMeter
from bench.planner import (
    RAW_OUT,
    PlannerProcess,
    load_average,
    planner_settings,
    produce,
    products,
    start_broker,
    wait_for_keys,
    warm_up,
)
from schemas.topics import PRODUCT_CREATED, PROMO_STARTED, VIDEO_PLANNED, VIDEO_REQUESTED_HOT
from skuvid.kafka_clients import compression_type

CATEGORY = "kitchen"


def promo_event(promo_id: str) -> bytes:
    now = datetime.now(UTC)
    return orjson.dumps({
        "schema_version": 1, "event_id": f"evt-{promo_id}", "occurred_at": now.isoformat(), "promo_id": promo_id,
        "copy_text": "限时5折", "starts_at": now.isoformat(), "ends_at": (now + timedelta(days=1)).isoformat(),
        "skus": [], "categories": [CATEGORY], "style": "festive",
    })


async def raw_producer(bootstrap: str, n: int, value: bytes, compression: str | None = None) -> float:
    """Records per second of one aiokafka producer sending ``n`` records (one ``send`` each) until all are
    acknowledged; its batches compressed with ``compression`` (None: not compressed, aiokafka's default)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
                                compression_type=compression)
    await producer.start()
    try:
        start = time.monotonic()
        pending = []
        for i in range(n):
            pending.append(await producer.send(RAW_OUT, value=value, key=f"SKU-{i:07d}".encode()))
        await asyncio.gather(*pending)
        return n / (time.monotonic() - start)
    finally:
        await producer.stop()


async def promo_requests(bootstrap: str, prefix: bytes, promo_id: str) -> tuple[dict[str, int], int]:
    """(requests per SKU, total) of ``promo_id`` on the hot lane, every partition read from its start to its end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    per_sku: dict[str, int] = {}
    total = 0
    try:
        partitions = [TopicPartition(VIDEO_REQUESTED_HOT.name, p) for p in range(VIDEO_REQUESTED_HOT.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        left = {tp: end for tp, end in (await consumer.end_offsets(partitions)).items() if end > 0}
        while left:
            for tp, records in (await consumer.getmany(*left, timeout_ms=1000, max_records=20_000)).items():
                for r in records:
                    if (r.key or b"").startswith(prefix):
                        request = orjson.loads(r.value)
                        if promo_id in request["variant_id"]:
                            per_sku[request["sku"]] = per_sku.get(request["sku"], 0) + 1
                            total += 1
                if records and records[-1].offset + 1 >= left[tp]:
                    del left[tp]
    finally:
        await consumer.stop()
    return per_sku, total


def request_value(settings, promo_id: str) -> bytes:
    """One real promo request for a catalog product (planned in process, as the planner would), as sent."""
    from consumers.planning import Planner  # noqa: PLC0415
    from inference.prompt import PromptEngine  # noqa: PLC0415
    from schemas.codec import encode_value  # noqa: PLC0415
    from schemas.events import ProductCreated, PromoStarted  # noqa: PLC0415

    _, value = products(1, "size", category=CATEGORY)[0]
    promo = PromoStarted.model_validate_json(promo_event(promo_id))
    plan = Planner(PromptEngine.load(), settings).plan(ProductCreated.model_validate_json(value).snapshot(),
                                                       source_event_id="evt-size", promo=promo)
    return encode_value(plan.requests[0])


def run(skus: int = 100_000) -> dict:
    load_before = load_average()
    run_id = os.urandom(3).hex()
    prefix = f"B{run_id}".encode()
    with tempfile.TemporaryDirectory(prefix="skuvid-bench-fanout-") as tmp:
        work = Path(tmp)
        with start_broker(work) as broker:
            bootstrap = broker.bootstrap
            asyncio.run(warm_up(bootstrap, [RAW_OUT, VIDEO_REQUESTED_HOT.name, VIDEO_PLANNED.name]))
            settings = planner_settings(bootstrap, work, f"planner-{run_id}", render_policy="auto")
            planner = PlannerProcess(settings, work / "planner.log")
            try:
                planner.wait_ready(300)
                t0 = time.monotonic()
                asyncio.run(produce(bootstrap, PRODUCT_CREATED.name, products(skus, run_id, category=CATEGORY)))
                loaded_at = asyncio.run(wait_for_keys(bootstrap, [VIDEO_PLANNED.name], prefix, skus, 3600))
                load_s = loaded_at - t0
                rss_loaded = planner.rss_mb()
                promo_id = f"P-{run_id}"
                value = request_value(settings, promo_id)
                size = len(value)
                pids = {"broker": broker.pid, "planner": planner.proc.pid}
                with CpuMeter(pids) as raw_cpu:
                    raw_before = asyncio.run(raw_producer(bootstrap, skus, value))
                with CpuMeter(pids) as fanout_cpu:
                    sent_at = time.monotonic()
                    promo = [(promo_id.encode(), promo_event(promo_id))]
                    asyncio.run(produce(bootstrap, PROMO_STARTED.name, promo))
                    done_at = asyncio.run(wait_for_keys(bootstrap, [VIDEO_REQUESTED_HOT.name], prefix, skus, 3600))
                fanout_s = done_at - sent_at
                rss_after = planner.rss_mb()
                raw_after = asyncio.run(raw_producer(bootstrap, skus, value))
                codec = compression_type(settings)
                raw_compressed = asyncio.run(raw_producer(bootstrap, skus, value, codec)) if codec else None
                per_sku, total = asyncio.run(promo_requests(bootstrap, prefix, promo_id))
            finally:
                planner.stop()
    raw = (raw_before + raw_after) / 2
    requests_per_s = skus / fanout_s
    return {
        "bench": "fanout",
        "date": datetime.now(UTC).date().isoformat(),
        "skus": skus,
        "requests_per_s": round(requests_per_s, 1),
        "raw_per_s": round(raw, 1),
        "ratio_vs_raw": round(requests_per_s / raw, 3),
        "duplicates": total - len(per_sku),
        "missing": skus - len(per_sku),
        "fanout_s": round(fanout_s, 1),
        "raw_before_per_s": round(raw_before, 1),
        "raw_after_per_s": round(raw_after, 1),
        "compression": settings.kafka_compression,
        "raw_compressed_per_s": raw_compressed and round(raw_compressed, 1),
        "ratio_vs_raw_compressed": raw_compressed and round(requests_per_s / raw_compressed, 3),
        "cpu_us_per_record": {"raw": raw_cpu.per_record(skus), "fanout": fanout_cpu.per_record(skus)},
        "request_bytes": size,
        "catalog_load_per_s": round(skus / load_s, 1),
        "planner_rss_mb": {"catalog_loaded": rss_loaded, "after_promo": rss_after},
        "store": settings.planner_store,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skus", type=int, default=100_000)
    print(orjson.dumps(run(parser.parse_args(argv).skus)).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
