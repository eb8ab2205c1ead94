"""Planner benchmarks on real Apache Kafka, each measured side by side with raw aiokafka in the same run.

Throughput (default): rounds of ``n`` distinct ``product.created`` records, alternating (ABBA) between
- raw: an aiokafka consumer → orjson parse → aiokafka producer relay (the floor any Python consumer pays),
  on scratch topics with the same partition count;
- planner: the real ``skuvid serve --role planner`` process (aiokafka, RocksDB tables, prompt engine, request
  keys, ``video.requested`` + ``video.planned``), render policy eager (every product is sent to a lane).
Each figure is records per second from the first input produced to the last output seen; acks=all both ways.
``planner_vs_raw`` is the median over rounds of each round's ratio (raw and planner measured back to back).
``cpu_us_per_record``: per side, the median over rounds of the CPU µs per record of the broker, the planner and
this process (``harness``: the load generator and the output watcher, and on the raw side the relay itself), and
how busy the machine was (``bench.cpu``), over each side's whole measurement (its clients' start and group join
included, a few ms of CPU): whether a side was bound by its own core or by a saturated machine.
The relay's group is joined before its clock starts, as the planner's is. ``planner_vs_raw_cold`` compares with
the relay timed as this benchmark did before 2026-12-01: started, joined and fetching inside the window (its
group join, about a second here, counted against it), kept for comparison with the figures measured so.

Recovery (``--recovery --skus N``): a catalog of N SKUs in the planner's changelogs, then
- ``raw_consume``: an aiokafka consumer reads both changelogs from the start to their end (no group);
- ``cold_start``: a planner with an empty data folder (a new pod): process start → "planner ready" (its tables
  recovered from the changelogs), and its resident memory then;
- ``restart``: the same planner stopped and started again on its data folder (RocksDB keeps the changelog
  offsets it has applied, so it reads only what was written since), restart → ready, and memory;
- ``after_load``: memory after planning ``--load`` more products on top.
The changelogs are written directly (the planner's own key/value bytes and partitions: one snapshot and one
request key per SKU), which is what a planner that had planned N products leaves behind, minus the hours.

``python -m bench.planner [-n N] [--rounds R]`` / ``python -m bench.planner --recovery --skus N
[--store rocksdb|memory]`` / ``python -m bench.planner --before DIR [--before-ready LINE]`` (an older checkout's
planner against this one, ABBA); ``skuvid bench planner --json`` runs the throughput benchmark. Needs the JDK and
Maven like the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2

from bench.cpu import CpuMeter
from schemas.topics import ALL_TOPICS, PRODUCT_CREATED, REQUEST_TOPICS, Topic
from skuvid.brokers import KafkaBroker, create_topics
from skuvid.settings import Settings, as_env

REPO = Path(__file__).resolve().parents[1]
CATALOG = (REPO / "tests" / "data" / "catalog.jsonl").read_bytes().splitlines()
RAW_IN, RAW_OUT = "bench.raw-in", "bench.raw-out"


def products(n: int, run: str, *, category: str | None = None, start: int = 0) -> list[tuple[bytes, bytes]]:
    """``n`` distinct valid products (catalog rows with unique SKUs and titles: ``run`` is in each title, so no
    round plans a text an earlier round planned, as a back-fill of distinct products does not), as (key, value);
    all in ``category`` when given."""
    rows = [orjson.loads(line) for line in CATALOG]
    out = []
    for i in range(start, start + n):
        row = dict(rows[i % len(rows)])
        sku = f"B{run}-{i:07d}"
        row |= {"sku": sku, "event_id": f"evt-{sku}", "title": f"{row['title']} #{run}-{i}", "hot": False}
        if category is not None:
            row["category"] = category
        out.append((sku.encode(), orjson.dumps(row)))
    return out


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- Kafka helpers --------------------------------------------------------------------------------------


async def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes]]) -> None:
    """Send every (key, value) with acks=all and wait for all acknowledgements."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
                                max_batch_size=256 * 1024)
    await producer.start()
    try:
        pending = []
        for key, value in records:
            pending.append(await producer.send(topic, value=value, key=key))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def wait_for_keys(bootstrap: str, topics: list[str], prefix: bytes, n: int, timeout_s: float) -> float:
    """Monotonic time when ``n`` records whose key starts with ``prefix`` have appeared on ``topics``."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    seen, deadline = 0, time.monotonic() + timeout_s
    try:
        while seen < n and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200, max_records=10_000)).values():
                seen += sum(1 for r in records if (r.key or b"").startswith(prefix))
        if seen < n:
            raise TimeoutError(f"only {seen} of {n} records with key prefix {prefix!r} on {topics}")
        return time.monotonic()
    finally:
        await consumer.stop()


async def end_offsets(bootstrap: str, topics: dict[str, int]) -> dict[tuple[str, int], int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
        return {(tp.topic, tp.partition): off for tp, off in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def warm_up(bootstrap: str, topics: Iterable[str]) -> None:
    """One acknowledged record per partition leader: the first measurement must not pay for leader elections."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for topic in topics:
            for p in sorted(await producer.partitions_for(topic)):
                await producer.send_and_wait(topic, b"warm-up", key=b"warm-up", partition=p)
    finally:
        await producer.stop()


def start_broker(work: Path) -> KafkaBroker:
    broker = KafkaBroker.start(work / "kafka", repo_root=REPO)
    scratch = [Topic(RAW_IN, ALL_TOPICS[0].model, PRODUCT_CREATED.partitions, "bench: raw relay input"),
               Topic(RAW_OUT, ALL_TOPICS[0].model, PRODUCT_CREATED.partitions, "bench: raw relay output")]
    create_topics(broker.bootstrap, [*ALL_TOPICS, *scratch])
    return broker


# --- the planner as a real process ---------------------------------------------------------------------


class PlannerProcess:
    """``skuvid serve --role planner`` with its log in a file; ``ready_s`` is process start → "planner ready"
    (logged once the tables are recovered). ``tree``: run the planner of another checkout (``--before``), whose
    log says ``ready_line`` when it is ready."""

    def __init__(self, settings: Settings, log_path: Path, *, tree: Path = REPO,
                 ready_line: str = "planner ready") -> None:
        self.settings = settings
        self.log_path = log_path
        self.ready_line = ready_line
        self._out = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._mark = log_path.stat().st_size
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "skuvid.cli", "serve", "--role", "planner"], cwd=tree,
                                     env={**os.environ, **as_env(settings)}, stdout=self._out,
                                     stderr=subprocess.STDOUT)
        self.ready_s: float | None = None

    def log(self) -> str:
        return self.log_path.read_bytes()[self._mark:].decode(errors="replace")

    def wait_ready(self, timeout_s: float = 1800) -> float:
        deadline = time.monotonic() + timeout_s
        while self.ready_line not in self.log():
            if self.proc.poll() is not None:
                raise RuntimeError(f"planner exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"planner not ready in {timeout_s} s:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        self.ready_s = time.monotonic() - self.started
        return self.ready_s

    def rss_mb(self) -> float:
        import psutil  # noqa: PLC0415 - a benchmark-only dependency

        return round(psutil.Process(self.proc.pid).memory_info().rss / 2**20, 1)

    def stop(self) -> int:
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._out.close()
        return code


def planner_settings(bootstrap: str, work: Path, group: str, **overrides) -> Settings:
    values = {"kafka_bootstrap": bootstrap, "model": "tiny", "planner_group": group,
              "planner_data_dir": work / group, "render_policy": "eager", "log_level": "INFO"}
    return Settings(**(values | overrides))


# --- throughput -----------------------------------------------------------------------------------------


async def raw_relay(bootstrap: str, n: int, group: str, joined: asyncio.Event) -> None:
    """consume → orjson → produce, committing after each fetched batch is acknowledged; ``joined`` is set once
    the group gave it its partitions (the timed part starts after that, as the planner's group is joined too)."""
    consumer = AIOKafkaConsumer(RAW_IN, bootstrap_servers=bootstrap, group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await consumer.start()
    await producer.start()
    done = 0
    try:
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
        joined.set()
        while done < n:
            for records in (await consumer.getmany(timeout_ms=200, max_records=1000)).values():
                sends = [await producer.send(RAW_OUT, value=orjson.dumps(orjson.loads(r.value)), key=r.key)
                         for r in records]
                await asyncio.gather(*sends)
                done += len(sends)
            await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


async def skip_to_end(bootstrap: str, group: str, topic: str) -> None:
    """Commit ``group``'s offsets of ``topic`` at its end: a new relay starts after earlier rounds' records."""
    ends = await end_offsets(bootstrap, {topic: PRODUCT_CREATED.partitions})
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(t, p) for t, p in ends])
        await consumer.commit({TopicPartition(t, p): off for (t, p), off in ends.items()})
    finally:
        await consumer.stop()


def measure_raw(bootstrap: str, n: int, *, warm: bool = True) -> float:
    """Records/s of the raw relay. ``warm``: its group is joined before the clock starts, as the planner's is;
    otherwise (the measurement this benchmark made before 2026-12-01) the relay starts, joins its group and
    fetches inside the timed window."""
    run = os.urandom(3).hex()
    records = products(n, run)

    async def go() -> float:
        await skip_to_end(bootstrap, f"raw-{run}", RAW_IN)
        joined = asyncio.Event()
        start = time.monotonic()
        if warm:
            relay = asyncio.create_task(raw_relay(bootstrap, n, f"raw-{run}", joined))
            await asyncio.wait([relay, asyncio.create_task(joined.wait())], return_when=asyncio.FIRST_COMPLETED)
            start = time.monotonic()
            await produce(bootstrap, RAW_IN, records)
        else:
            await produce(bootstrap, RAW_IN, records)
            relay = asyncio.create_task(raw_relay(bootstrap, n, f"raw-{run}", joined))
        end = await wait_for_keys(bootstrap, [RAW_OUT], f"B{run}".encode(), n, 600)
        await relay
        return n / (end - start)

    return asyncio.run(go())


def measure_planner(bootstrap: str, n: int) -> float:
    run = os.urandom(3).hex()
    records = products(n, run)

    async def go() -> float:
        start = time.monotonic()
        await produce(bootstrap, PRODUCT_CREATED.name, records)
        end = await wait_for_keys(bootstrap, [t.name for t in REQUEST_TOPICS], f"B{run}".encode(), n, 900)
        return n / (end - start)

    return asyncio.run(go())


def run(n: int = 3000, rounds: int = 4) -> dict:
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="skuvid-bench-planner-") as tmp:
        work = Path(tmp)
        with start_broker(work) as broker:
            asyncio.run(warm_up(broker.bootstrap, [RAW_IN, RAW_OUT, *(t.name for t in REQUEST_TOPICS)]))
            settings = planner_settings(broker.bootstrap, work, f"planner-{os.urandom(3).hex()}")
            planner = PlannerProcess(settings, work / "planner.log")
            try:
                planner.wait_ready(300)
                measure_planner(broker.bootstrap, min(n, 500))  # warm-up: first-use costs stay out
                per_round = []
                pids = {"broker": broker.pid, "planner": planner.proc.pid}
                for r in range(rounds):
                    raw_cpu, plan_cpu = CpuMeter(pids), CpuMeter(pids)
                    if r % 2 == 0:  # ABBA: drift in the machine's load hits both sides alike
                        with raw_cpu:
                            raw = measure_raw(broker.bootstrap, n)
                        with plan_cpu:
                            plan = measure_planner(broker.bootstrap, n)
                        cold = measure_raw(broker.bootstrap, n, warm=False)
                    else:
                        cold = measure_raw(broker.bootstrap, n, warm=False)
                        with plan_cpu:
                            plan = measure_planner(broker.bootstrap, n)
                        with raw_cpu:
                            raw = measure_raw(broker.bootstrap, n)
                    per_round.append({"raw_per_s": round(raw, 1), "planner_per_s": round(plan, 1),
                                      "ratio": round(plan / raw, 3), "raw_cold_per_s": round(cold, 1),
                                      "ratio_vs_cold": round(plan / cold, 3),
                                      "raw_cpu": raw_cpu.per_record(n), "planner_cpu": plan_cpu.per_record(n)})
                rss = planner.rss_mb()
            finally:
                planner.stop()
    return {
        "bench": "planner",
        "date": datetime.now(UTC).date().isoformat(),
        "n": n,
        "rounds": per_round,
        "broker": "Apache Kafka 4 (KRaft, 1 node, local)",
        "raw_aiokafka_records_per_s": statistics.median(r["raw_per_s"] for r in per_round),
        "planner_records_per_s": statistics.median(r["planner_per_s"] for r in per_round),
        "planner_vs_raw": statistics.median(r["ratio"] for r in per_round),
        "raw_cold_records_per_s": statistics.median(r["raw_cold_per_s"] for r in per_round),
        "planner_vs_raw_cold": statistics.median(r["ratio_vs_cold"] for r in per_round),
        "cpu_us_per_record": {side: _median_cpu(per_round, f"{side}_cpu") for side in ("raw", "planner")},
        "planner_rss_mb": rss,
        "store": settings.planner_store,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "cpus": os.cpu_count(),
    }


def _median_cpu(rounds: list[dict], side: str) -> dict[str, float]:
    """The median over rounds of each figure of one side's ``CpuMeter.per_record``."""
    return {k: statistics.median(r[side][k] for r in rounds) for k in rounds[0][side]}


def run_before_after(before: Path, ready_line: str, n: int = 3000, rounds: int = 4) -> dict:
    """The planner of another checkout (``before``: e.g. ``git archive <commit> | tar -x -C DIR``; its log says
    ``ready_line`` when ready) against this tree's, alternating (ABBA) on one broker, each right after a raw relay
    round; a fresh planner group per round, starting at the end of the product topic."""
    load_before = load_average()
    sides = {"before": (before, ready_line), "after": (REPO, "planner ready")}
    per_round = []
    with tempfile.TemporaryDirectory(prefix="skuvid-bench-planner-") as tmp:
        work = Path(tmp)
        with start_broker(work) as broker:
            asyncio.run(warm_up(broker.bootstrap, [RAW_IN, RAW_OUT, *(t.name for t in REQUEST_TOPICS)]))
            for r in range(rounds):
                for side in ("before", "after") if r % 2 == 0 else ("after", "before"):
                    tree, ready = sides[side]
                    settings = planner_settings(broker.bootstrap, work, f"planner-{side}-{r}")
                    # A new group starts after the earlier rounds' products, not by planning them all again.
                    asyncio.run(skip_to_end(broker.bootstrap, settings.planner_group, PRODUCT_CREATED.name))
                    planner = PlannerProcess(settings, work / f"{side}.log", tree=tree, ready_line=ready)
                    try:
                        planner.wait_ready(300)
                        measure_planner(broker.bootstrap, 500)  # warm-up: first-use costs stay out
                        raw, plan = measure_raw(broker.bootstrap, n), measure_planner(broker.bootstrap, n)
                        rss = planner.rss_mb()
                    finally:
                        planner.stop()
                    per_round.append({"round": r, "side": side, "raw_per_s": round(raw), "planner_per_s": round(plan),
                                      "ratio": round(plan / raw, 3), "rss_mb": rss})
    summary = {side: {key: statistics.median(row[key] for row in per_round if row["side"] == side)
                      for key in ("planner_per_s", "raw_per_s", "ratio")} for side in sides}
    return {"bench": "planner-before-after", "date": datetime.now(UTC).date().isoformat(), "n": n,
            "before_tree": str(before), "rounds": per_round, **summary,
            "load_average_before": load_before, "load_average_after": load_average(), "cpus": os.cpu_count()}


# --- recovery -------------------------------------------------------------------------------------------


def changelog_records(n: int, run: str) -> tuple[Iterator[tuple[bytes, bytes]], Iterator[tuple[bytes, bytes]]]:
    """The planner's changelog records for ``n`` planned products: (json key, json snapshot) of ``catalog`` and
    (json "sku|daily-a", json request key) of ``planned``. Keys partition like the planner writes them (the
    SKU's partition; the caller uses murmur2 of the SKU for both)."""
    from schemas.events import ProductCreated  # noqa: PLC0415

    def catalog() -> Iterator[tuple[bytes, bytes]]:
        for start in range(0, n, 10_000):
            for key, value in products(min(10_000, n - start), run, start=start):
                snapshot = ProductCreated.model_validate_json(value).snapshot()
                yield key, orjson.dumps(snapshot.model_dump(mode="json"))

    def planned() -> Iterator[tuple[bytes, bytes]]:
        for i in range(n):
            sku = f"B{run}-{i:07d}".encode()
            yield sku, orjson.dumps(hashlib.sha256(sku).hexdigest())

    return catalog(), planned()


async def write_changelogs(bootstrap: str, group: str, n: int, run: str) -> dict[str, int]:
    """Write both changelogs; the record key is the table's JSON key, the partition the SKU's."""
    catalog, planned = changelog_records(n, run)
    sent = {}
    for table, records in (("catalog", catalog), ("planned", planned)):
        topic = f"{group}-{table}-changelog"
        suffix = b"|daily-a" if table == "planned" else b""
        sent[topic] = await _produce_keyed(bootstrap, topic, ((sku, orjson.dumps(sku.decode() + suffix.decode()), v)
                                                             for sku, v in records))
    return sent


async def _produce_keyed(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes, bytes]]) -> int:
    """(partition key, record key, value): partitioned by murmur2 of the partition key."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_batch_size=1 << 20,
                                max_request_size=4 << 20)
    await producer.start()
    try:
        batches: dict[int, object] = {}
        pending, sent = [], 0
        for pkey, key, value in records:
            p = (murmur2(pkey) & 0x7FFFFFFF) % PRODUCT_CREATED.partitions
            batch = batches.get(p)
            if batch is None or batch.append(key=key, value=value, timestamp=None) is None:
                if batch is not None:
                    pending.append(await producer.send_batch(batch, topic, partition=p))
                batch = batches[p] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
            sent += 1
            if len(pending) >= 64:
                await asyncio.gather(*pending)
                pending.clear()
        for p, batch in batches.items():
            pending.append(await producer.send_batch(batch, topic, partition=p))
        await asyncio.gather(*pending)
        return sent
    finally:
        await producer.stop()


async def raw_consume(bootstrap: str, topics: list[str]) -> dict:
    """Read ``topics`` from the beginning to their current end offsets: records/s and MB/s."""
    ends = await end_offsets(bootstrap, dict.fromkeys(topics, PRODUCT_CREATED.partitions))
    wanted = {TopicPartition(t, p): end for (t, p), end in ends.items() if end > 0}
    total = sum(wanted.values())
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20)
    await consumer.start()
    try:
        consumer.assign(list(wanted))
        await consumer.seek_to_beginning(*wanted)
        start, count, size = time.monotonic(), 0, 0
        left = dict(wanted)
        while left:
            for tp, records in (await consumer.getmany(*left, timeout_ms=1000, max_records=50_000)).items():
                count += len(records)
                size += sum(len(r.value or b"") + len(r.key or b"") for r in records)
                if records and records[-1].offset + 1 >= left[tp]:
                    del left[tp]
        seconds = time.monotonic() - start
    finally:
        await consumer.stop()
    return {"records": count, "expected": total, "seconds": round(seconds, 2),
            "records_per_s": round(count / seconds), "mb_per_s": round(size / seconds / 2**20, 1)}


def run_recovery(skus: int = 1_000_000, store: str = "rocksdb", load: int = 2000) -> dict:
    load_before = load_average()
    run_id = os.urandom(3).hex()
    with tempfile.TemporaryDirectory(prefix="skuvid-bench-recovery-") as tmp:
        work = Path(tmp)
        with start_broker(work) as broker:
            group = f"planner-{run_id}"
            settings = planner_settings(broker.bootstrap, work, group, planner_store=store, render_policy="lazy")
            # The planner creates its topics (changelogs compacted) before any agent starts: let it, then stop it.
            first = PlannerProcess(settings, work / "planner.log")
            first.wait_ready(300)
            first.stop()
            t0 = time.monotonic()
            written = asyncio.run(write_changelogs(broker.bootstrap, group, skus, run_id))
            write_s = time.monotonic() - t0
            changelogs = list(written)
            raw = asyncio.run(raw_consume(broker.bootstrap, changelogs))
            cold_dir = work / f"{group}-cold"
            cold_settings = settings.model_copy(update={"planner_data_dir": cold_dir})
            cold = PlannerProcess(cold_settings, work / "planner.log")
            cold_s = cold.wait_ready()
            cold_rss = cold.rss_mb()
            cold.stop()
            restart = PlannerProcess(cold_settings, work / "planner.log")
            restart_s = restart.wait_ready()
            restart_rss = restart.rss_mb()
            kept = "recovered: 0 changelog records" in restart.log() if store == "rocksdb" else None
            try:
                prefix = f"L{run_id}"
                asyncio.run(produce(broker.bootstrap, PRODUCT_CREATED.name, products(load, prefix[1:] + "L")))
                time.sleep(1)
                asyncio.run(wait_for_keys(broker.bootstrap, ["video.planned"], f"B{run_id}L".encode(), load, 600))
                load_rss = restart.rss_mb()
            finally:
                restart.stop()
            disk_mb = round(sum(f.stat().st_size for f in cold_dir.rglob("*") if f.is_file()) / 2**20, 1)
    records = sum(written.values())
    return {
        "bench": "planner-recovery",
        "date": datetime.now(UTC).date().isoformat(),
        "skus": skus,
        "store": store,
        "changelog_records": records,
        "changelogs_written_s": round(write_s, 1),
        "raw_consume": raw,
        "cold_start": {"ready_s": round(cold_s, 1), "records_per_s": round(records / cold_s), "rss_mb": cold_rss,
                       "vs_raw_consume": round(records / cold_s / raw["records_per_s"], 3)},
        "restart": {"ready_s": round(restart_s, 1), "rss_mb": restart_rss, "tables_kept": kept},
        "after_load": {"products": load, "rss_mb": load_rss},
        "data_dir_mb": disk_mb if store == "rocksdb" else None,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3000, help="records per throughput round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--recovery", action="store_true", help="the recovery benchmark instead")
    parser.add_argument("--skus", type=int, default=1_000_000, help="catalog size of the recovery benchmark")
    parser.add_argument("--store", choices=("rocksdb", "memory"), default="rocksdb")
    parser.add_argument("--before", type=Path, help="a checkout of an older planner to measure against this one")
    parser.add_argument("--before-ready", default="planner ready", help="what the older planner logs when ready")
    args = parser.parse_args(argv)
    if args.recovery:
        result = run_recovery(args.skus, args.store)
    elif args.before:
        result = run_before_after(args.before, args.before_ready, args.n, args.rounds)
    else:
        result = run(args.n, args.rounds)
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
