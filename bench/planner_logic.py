"""The planner's own work with Kafka and its stores taken away: the ceiling of one planner core.

``skuvid bench planner`` and ``skuvid bench fanout`` measure the real service on a real broker. This measures
what is left when the broker, the network, aiokafka and RocksDB cost nothing: ``PlannerFlow`` (the service's
decisions) over plain dicts, every input decoded as the service decodes it and every output encoded as the
service sends it (``RecordEncoder``, CloudEvents headers, the partition of its key), then counted and dropped.

- ``distinct``: ``n`` distinct ``product.created`` values (``bench.planner.products``), render policy eager;
- ``fanout``: a promo over a category of ``skus`` of them, scanned partition by partition as the planner does.

Each figure is CPU µs of this thread (``time.thread_time``) per product or per request, and ``ceiling_per_s``
its inverse: what one core could plan if nothing else cost anything. A goal above the ceiling cannot be met
by making Kafka cheaper. ``python -m bench.planner_logic [-n N] [--skus N]`` or ``skuvid bench planner_logic``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import orjson
from pydantic import BaseModel

from bench.fanout import CATEGORY, promo_event
from bench.planner import products
from consumers.planner import CATALOG_PARTITIONS, Coalescer, PlannerFlow, PromoTarget, RecordEncoder
from consumers.planning import Planner
from inference.prompt import PromptEngine
from schemas.codec import ce_headers, decode, record_key
from schemas.topics import PRODUCT_CREATED, PROMO_STARTED, VIDEO_REQUESTED_HOT, Topic
from skuvid.metrics import Metrics
from skuvid.partitioning import partition_for
from skuvid.settings import Settings


class _Catalog(dict):
    """The catalog table as a dict, with the table's partition scan (``consumers.planner_tables.Table``) over
    an index of each partition's SKUs in key order, made before the timed scan as a store keeps it."""

    def __setitem__(self, key: str, value: dict) -> None:
        self.__dict__.pop("_index", None)
        super().__setitem__(key, value)

    def index(self) -> dict[int, list[str]]:
        if "_index" not in self.__dict__:
            index: dict[int, list[str]] = {p: [] for p in range(CATALOG_PARTITIONS)}
            for sku in sorted(self):
                index[partition_for(sku.encode(), CATALOG_PARTITIONS)].append(sku)
            self.__dict__["_index"] = index
        return self.__dict__["_index"]

    def partition_items(self, partition: int, after: str | None = None) -> Iterator[tuple[str, dict]]:
        for sku in self.index()[partition]:
            if after is None or sku > after:
                yield sku, self[sku]


class _Sink:
    """Where the flow's outputs go: each encoded as the service sends it (value, headers, partition of its key),
    then counted per topic and dropped, as the producer drops a batch once acknowledged (kept, millions of them
    would make the garbage collector's full passes, not the planner, the cost measured)."""

    def __init__(self) -> None:
        self.encode = RecordEncoder()
        self.counts: Counter[str] = Counter()
        self.hot_keys: set[bytes] = set()

    async def send(self, topic: Topic, event: BaseModel, key: bytes | None = None, partition: int | None = None):
        key = key if key is not None else record_key(event)
        if partition is None and key is not None:  # computed and dropped like the value and headers: their cost
            partition = partition_for(key, topic.partitions)  # is what is measured
        self.encode(event)
        ce_headers(topic, event)
        self.counts[topic.name] += 1
        if topic.name == VIDEO_REQUESTED_HOT.name and key is not None:
            self.hot_keys.add(key)


def _flow(settings: Settings, sink: _Sink) -> PlannerFlow:
    engine = PromptEngine.load()
    tick = Topic("bench-coalesce", BaseModel, CATALOG_PARTITIONS, "bench: update-storm ticks")
    coalescer = Coalescer(settings.planner_coalesce_s) if settings.planner_coalesce_s > 0 else None
    return PlannerFlow(Planner(engine, settings), engine, _Catalog(), {}, sink.send, Metrics(),
                       render_policy=settings.render_policy, coalescer=coalescer, tick_topic=tick)


def _cpu_us_per(count: int, work) -> float:
    gc.collect()
    start = time.thread_time()
    asyncio.run(work())
    return 1e6 * (time.thread_time() - start) / count


def distinct(n: int) -> float:
    """CPU µs per distinct product: decode + plan + encode its outputs."""
    flow = _flow(Settings(model="tiny", render_policy="eager"), _Sink())

    async def plan(values: list[bytes]) -> None:
        for value in values:
            await flow.on_product(decode(PRODUCT_CREATED, value))

    asyncio.run(plan([v for _, v in products(500, "warm")]))  # first-use costs (regex caches, pydantic) stay out
    values = [v for _, v in products(n, os.urandom(3).hex())]
    return _cpu_us_per(n, lambda: plan(values))


def fanout(skus: int) -> float:
    """CPU µs per request of a promo over a category of ``skus`` products already planned."""
    sink = _Sink()
    flow = _flow(Settings(model="tiny", render_policy="auto"), sink)

    async def load() -> None:
        for _, value in products(skus, os.urandom(3).hex(), category=CATEGORY):
            await flow.on_product(decode(PRODUCT_CREATED, value))

    asyncio.run(load())
    flow.catalog.index()
    gc.freeze()  # the catalog is in RocksDB in the service, not among the objects the collector walks
    promo = decode(PROMO_STARTED, promo_event("P-bench"))
    targets = [PromoTarget(promo=promo, scan_partition=p) for p in range(CATALOG_PARTITIONS)]
    sink.counts.clear()

    async def scan() -> None:  # each partition in one part (the service's parts of 4,096 rows add a record)
        for target in targets:
            await flow.on_promo_target(target)

    try:
        per = _cpu_us_per(skus, scan)
    finally:
        gc.unfreeze()
    if sink.counts[VIDEO_REQUESTED_HOT.name] != skus or len(sink.hot_keys) != skus:
        raise RuntimeError(f"the fan-out planned {sink.counts[VIDEO_REQUESTED_HOT.name]} requests for "
                           f"{len(sink.hot_keys)} of {skus} products")
    return per


def run(n: int = 3000, skus: int = 20_000, repeats: int = 3) -> dict:
    distinct_us = statistics.median(distinct(n) for _ in range(repeats))
    fanout_us = statistics.median(fanout(skus) for _ in range(repeats))
    return {
        "bench": "planner_logic",
        "date": datetime.now(UTC).date().isoformat(),
        "distinct": {"n": n, "cpu_us_per_product": round(distinct_us, 1), "ceiling_per_s": round(1e6 / distinct_us)},
        "fanout": {"skus": skus, "cpu_us_per_request": round(fanout_us, 1), "ceiling_per_s": round(1e6 / fanout_us)},
        "repeats": repeats,
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3000)
    parser.add_argument("--skus", type=int, default=20_000)
    args = parser.parse_args(argv)
    print(orjson.dumps(run(args.n, args.skus)).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
