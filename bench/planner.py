"""Planner throughput on real Apache Kafka, side by side with a raw aiokafka relay of the same records.

Both runs read the same N ``product.created`` records and write N records, waiting for acks=all:
- raw: aiokafka consumer → orjson parse → aiokafka producer (the floor any Python consumer pays);
- planner: the real ``skuvid serve --role planner`` process (faust, tables, prompt engine, request keys).
The figure is records per second from the first input to the last output, and their ratio.

``python -m bench.planner [-n N]`` (needs the JDK and Maven like the tests).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.topics import ALL_TOPICS, PRODUCT_CREATED, REQUEST_TOPICS, VIDEO_FAILED
from skuvid.brokers import KafkaBroker, create_topics
from skuvid.settings import Settings, as_env

REPO = Path(__file__).resolve().parents[1]
CATALOG = (REPO / "tests" / "data" / "catalog.jsonl").read_bytes().splitlines()


def products(n: int, run: str) -> list[tuple[bytes, bytes]]:
    """``n`` distinct valid products (catalog rows with unique SKUs), as (key, value)."""
    out = []
    for i in range(n):
        row = orjson.loads(CATALOG[i % len(CATALOG)])
        sku = f"B{run}-{i:06d}"
        row |= {"sku": sku, "event_id": f"evt-{sku}", "title": f"{row['title']} #{i}"}
        out.append((sku.encode(), orjson.dumps(row)))
    return out


async def produce(bootstrap: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(PRODUCT_CREATED.name, value=v, key=k) for k, v in records])
    finally:
        await producer.stop()


async def count_outputs(bootstrap: str, topics: list[str], prefix: bytes, n: int, timeout_s: float) -> float:
    """Seconds until ``n`` records whose key starts with ``prefix`` appeared on ``topics`` (monotonic clock)."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    seen, deadline = 0, time.monotonic() + timeout_s
    try:
        while seen < n and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
                seen += sum(1 for r in records if (r.key or b"").startswith(prefix))
        return time.monotonic() if seen >= n else float("nan")
    finally:
        await consumer.stop()


async def raw_relay(bootstrap: str, n: int, out_topic: str, group: str) -> None:
    consumer = AIOKafkaConsumer(PRODUCT_CREATED.name, bootstrap_servers=bootstrap, group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await consumer.start()
    await producer.start()
    done = 0
    try:
        while done < n:
            for records in (await consumer.getmany(timeout_ms=200, max_records=1000)).values():
                sends = [await producer.send(out_topic, value=orjson.dumps(orjson.loads(r.value)), key=r.key)
                         for r in records]
                await asyncio.gather(*sends)
                done += len(records)
            await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


def measure_raw(bootstrap: str, n: int) -> float:
    run = os.urandom(3).hex()
    records = products(n, run)

    async def go() -> float:
        start = time.monotonic()
        await produce(bootstrap, records)
        await raw_relay(bootstrap, n, VIDEO_FAILED.name, group=f"raw-{run}")  # a throwaway broker: any sink
        end = await count_outputs(bootstrap, [VIDEO_FAILED.name], f"B{run}".encode(), n, 600)
        return end - start

    return asyncio.run(go())


def measure_planner(bootstrap: str, n: int, work: Path) -> float:
    run = os.urandom(3).hex()
    settings = Settings(kafka_bootstrap=bootstrap, model="tiny", planner_group=f"planner-{run}",
                        planner_data_dir=work / run)
    log = work / f"planner-{run}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "skuvid.cli", "serve", "--role", "planner"], cwd=REPO,
                                env={**os.environ, **as_env(settings)}, stdout=out, stderr=subprocess.STDOUT)
    try:
        while b"Worker ready" not in log.read_bytes():
            if proc.poll() is not None or not log.exists():
                raise RuntimeError(f"planner exited:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)

        async def go() -> float:
            start = time.monotonic()
            await produce(bootstrap, products(n, run))
            end = await count_outputs(bootstrap, [t.name for t in REQUEST_TOPICS], f"B{run}".encode(), n, 900)
            return end - start

        return asyncio.run(go())
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def run(n: int = 2000) -> dict:
    with tempfile.TemporaryDirectory(prefix="skuvid-bench-planner-") as tmp:
        work = Path(tmp)
        with KafkaBroker.start(work / "kafka", repo_root=REPO) as broker:
            create_topics(broker.bootstrap, ALL_TOPICS)
            raw_s = measure_raw(broker.bootstrap, n)
            planner_s = measure_planner(broker.bootstrap, n, work)
    return {
        "n": n,
        "broker": "Apache Kafka 4 (KRaft, 1 node, local)",
        "raw_aiokafka_records_per_s": round(n / raw_s, 1),
        "planner_records_per_s": round(n / planner_s, 1),
        "planner_vs_raw": round(raw_s / planner_s, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000)
    print(orjson.dumps(run(parser.parse_args(argv).n)).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
