"""The world of one reliability scenario: a fresh Apache Kafka, an S3 API server, real service processes, and
a tap that reads every outcome topic from the start.

``Rig`` owns what it starts and stops all of it in ``close()``. Brokers are started from the calling (main)
thread: a broker dies with the thread that spawned it. Services get their Settings through the environment
(``as_env``) and the AWS credentials of the S3 server as ``AWS_*`` variables of their own environment only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from schemas.codec import ce_headers, decode, encode_value, record_key
from schemas.events import DeadLetter, VideoFailed, VideoReady, VideoRequested
from schemas.topics import (
    ALL_TOPICS,
    BY_NAME,
    DEAD_LETTER,
    PRODUCT_CREATED,
    PRODUCT_UPDATED,
    REQUEST_TOPICS,
    VIDEO_FAILED,
    VIDEO_READY,
    Topic,
)
from skuvid.brokers import KafkaBroker, _die_with_parent, create_topics, free_port
from skuvid.settings import Settings, StoreKind
from tests.integration.harness import REPO_ROOT, CommandService, Service, group_lag, restart_kafka

BUCKET = "skuvid-reliability"
FAKE_MODEL = "fake-generator"  # the model id requests carry and FakeGenerator serves
AWS_ENV = {"AWS_ACCESS_KEY_ID": "reliability", "AWS_SECRET_ACCESS_KEY": "reliability", "AWS_DEFAULT_REGION": "us-east-1"}
REQUEST_TOPIC_NAMES = [t.name for t in REQUEST_TOPICS]
PRODUCT_TOPIC_NAMES = [PRODUCT_CREATED.name, PRODUCT_UPDATED.name]
TAPPED = [VIDEO_READY.name, VIDEO_FAILED.name, DEAD_LETTER.name, *REQUEST_TOPIC_NAMES]


# --- the S3 API server ------------------------------------------------------------------------------------


class S3Process:
    """``tests.reliability.s3_server`` as a child process: moto's S3 that goes ``down`` and comes back ``up``."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = open(log_dir / "s3.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.s3_server", "--port", str(self.port), "--bucket", BUCKET],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, cwd=REPO_ROOT, text=True,
            env={**os.environ, **AWS_ENV}, preexec_fn=_die_with_parent,  # noqa: PLW1509 - it only calls prctl(2)
        )
        self.is_up = False

    def wait_ready(self) -> None:
        self._expect("ready")
        self.is_up = True

    def _expect(self, word: str) -> None:
        line = self.proc.stdout.readline().strip()  # type: ignore[union-attr]
        if line != word:
            raise RuntimeError(f"S3 server said {line!r}, expected {word!r}; see {self._log.name}")

    def command(self, word: str) -> None:
        self.proc.stdin.write(word + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        self._expect(word)
        self.is_up = word == "up"

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"])

    def objects(self) -> dict[str, bytes]:
        """Every object of the bucket: key -> bytes for the videos and manifests (small), ``b""`` for the rest
        (posters: only their presence counts)."""
        s3 = self.client()
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
                for o in page.get("Contents", [])]
        return {key: s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() if key.endswith((".mp4", ".json")) else b""
                for key in keys}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# --- the outcome tap --------------------------------------------------------------------------------------


@dataclass
class Seen:
    """One record read from a tapped topic: the decoded event (None if it did not decode) and when we saw it."""

    topic: str
    partition: int
    offset: int
    event: object
    at: float  # time.monotonic()
    size: int = 0  # bytes of the record's value


class Tap:
    """Reads every tapped topic in the background from where it ended when ``start()`` was called (so a
    shared broker's history is skipped), survives a broker restart, and keeps everything it read."""

    def __init__(self, bootstrap: str, topics: Iterable[str] = TAPPED, *, from_start: bool = False) -> None:
        self.bootstrap = bootstrap
        self.from_start = from_start
        self.topics = list(topics)
        self.seen: dict[str, list[Seen]] = defaultdict(list)
        self.undecodable: list[tuple[str, int, int]] = []
        self._task: asyncio.Task | None = None
        self._changed = asyncio.Event()

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest", fetch_max_wait_ms=100,
                                    max_partition_fetch_bytes=16 << 20, fetch_max_bytes=64 << 20)
        await consumer.start()
        partitions = [TopicPartition(t, p) for t in self.topics for p in range(BY_NAME[t].partitions)]
        consumer.assign(partitions)
        if not self.from_start:
            for tp, offset in (await consumer.end_offsets(partitions)).items():
                consumer.seek(tp, offset)
        self._task = asyncio.create_task(self._read(consumer))

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while True:
                try:
                    batches = await consumer.getmany(timeout_ms=200)
                except Exception:  # noqa: BLE001 - the broker may be down on purpose; keep reading
                    await asyncio.sleep(0.5)
                    continue
                now = time.monotonic()
                for records in batches.values():
                    for r in records:
                        try:
                            event = decode(r.topic, r.value, max_bytes=16 << 20)
                        except Exception:  # noqa: BLE001 - a record we cannot read is a finding, kept
                            self.undecodable.append((r.topic, r.partition, r.offset))
                            event = None
                        self.seen[r.topic].append(Seen(r.topic, r.partition, r.offset, event, now,
                                                       len(r.value or b"")))
                if batches:
                    self._changed.set()
        finally:
            await consumer.stop()

    def events(self, topic: str) -> list:
        return [s.event for s in self.seen[topic] if s.event is not None]

    def ready(self) -> list[VideoReady]:
        return self.events(VIDEO_READY.name)

    def failed(self) -> list[VideoFailed]:
        return self.events(VIDEO_FAILED.name)

    def dead_letters(self) -> list[DeadLetter]:
        return self.events(DEAD_LETTER.name)

    def requests(self) -> list[VideoRequested]:
        return [e for t in REQUEST_TOPIC_NAMES for e in self.events(t)]

    def outcome_keys(self) -> set[str]:
        return {e.request_key for e in self.ready()} | {e.request_key for e in self.failed() if e.request_key}

    async def wait_for(self, done: Callable[[], bool], timeout_s: float, *, alive: Callable[[], None] | None = None,
                       every_s: float = 0.5) -> bool:
        """Until ``done()`` or the time is up; ``alive()`` runs in between (it may restart or check processes)."""
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                return False
            if alive is not None:
                alive()
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), every_s)
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, 10)


# --- producing --------------------------------------------------------------------------------------------


class Producer:
    """A plain idempotent producer (acks=all) for scenario inputs: events with skuvid's headers, or raw bytes."""

    def __init__(self, bootstrap: str) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                          linger_ms=5, max_request_size=8 << 20, request_timeout_ms=60_000)

    async def __aenter__(self) -> Producer:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self._producer.stop()

    async def events(self, topic: Topic, events: Iterable, *, partitions: Iterable[int | None] | None = None):
        """Send ``events`` (acknowledged, in order per partition); returns their RecordMetadata."""
        events = list(events)
        parts = list(partitions) if partitions is not None else [None] * len(events)
        futures = [await self._producer.send(topic.name, value=encode_value(e), key=record_key(e),
                                             headers=ce_headers(topic, e), partition=p)
                   for e, p in zip(events, parts, strict=True)]
        return [await f for f in futures]

    async def raw(self, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]):
        """Send ``(key, value)`` pairs as they are; returns their RecordMetadata."""
        futures = [await self._producer.send(topic, value=value, key=key) for key, value in records]
        return [await f for f in futures]


# --- the rig ----------------------------------------------------------------------------------------------


def suite_settings(bootstrap: str, work: Path, **overrides) -> Settings:
    """Service settings of this suite: short session timeouts (as ``harness.service_settings``), the preview
    size (240p, 2 s, one step), files under ``work``. Built here rather than by ``service_settings``, which
    also talks to the broker (sync) and so cannot be called from a scenario's event loop."""
    run = uuid.uuid4().hex[:8]
    values = {
        "kafka_bootstrap": bootstrap, "planner_group": f"planner-{run}", "renderer_group": f"renderer-{run}",
        "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "model": FAKE_MODEL, "resolution": "240p",
        "duration_s": 2.0, "steps": 1, "guidance_scale": 1.0, "quality_max_attempts": 1, "clip_model": None,
        "quality_clip_text_min": None, "quality_clip_image_min": None, "render_policy": "eager",
        "local_store_dir": work / "cdn", "planner_data_dir": work / "planner", "image_file_root": REPO_ROOT,
        "log_format": "console",
    }
    return Settings(**(values | overrides))



@dataclass
class Rig:
    """A broker and an S3 server, used by one scenario or shared by several (``begin`` starts each one's
    part: its log folder, its services and its consumer groups)."""

    work: Path
    broker: KafkaBroker
    s3: S3Process | None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    tag: str = "run"
    log_dir: Path | None = None
    services: list[Service] = field(default_factory=list)
    exits: list[tuple[str, int, str]] = field(default_factory=list)  # (role, code, log) of unexpected exits

    @classmethod
    def start(cls, work: Path, *, s3: bool = True) -> Rig:
        work.mkdir(parents=True, exist_ok=True)
        store = S3Process(work) if s3 else None  # starts while the broker does; ``ready`` is read below
        try:
            broker = KafkaBroker.start(work / "kafka", repo_root=REPO_ROOT)
        except BaseException:
            if store is not None:
                store.stop()
            raise
        try:
            create_topics(broker.bootstrap, ALL_TOPICS)
            if store is not None:
                store.wait_ready()
        except BaseException:
            broker.stop()
            if store is not None:
                store.stop()
            raise
        return cls(work, broker, store)

    def begin(self, tag: str, log_dir: Path) -> None:
        """Start a scenario on this rig: its services, exits and groups are its own from now on."""
        self.stop_services()
        log_dir.mkdir(parents=True, exist_ok=True)
        self.tag, self.log_dir, self.services, self.exits = tag, log_dir, [], []

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def sku_prefix(self) -> str:
        """Prefix of the SKUs of the current scenario (unique per rig and scenario)."""
        return f"{self.tag[:1].upper()}{self.run_id}"

    def settings(self, **overrides) -> Settings:
        """Service settings: fake model at the CPU preview size, S3 store, the real quality gate without CLIP,
        short session timeouts, fast retries; consumer groups of this rig and scenario."""
        values = {
            "planner_group": f"planner-{self.run_id}-{self.tag}",
            "renderer_group": f"renderer-{self.run_id}-{self.tag}",
            "model": FAKE_MODEL,
            "render_policy": "eager",  # every planned request is rendered now (no listing API in these runs)
            "steps": 1,
            "clip_model": None,
            "quality_publish_best_below_gate": False,
            "max_in_flight": 2,
            "max_attempts": 5,
            "retry_backoff_s": 0.5,
            "retry_backoff_max_s": 4.0,
            "shutdown_grace_s": 10.0,
            "log_format": "console",
        }
        if self.s3 is not None:
            values |= {"store": StoreKind.S3, "s3_endpoint_url": self.s3.endpoint, "s3_bucket": BUCKET}
        return suite_settings(self.bootstrap, self.log_dir or self.work, **(values | overrides))

    async def skip_history(self, settings: Settings) -> None:
        """Commit the current end offsets as the starting point of ``settings``' renderer and planner groups,
        so services of this scenario on a shared broker never see earlier scenarios' records."""
        for group, topics in ((settings.renderer_group, REQUEST_TOPIC_NAMES),
                              (settings.planner_group, PRODUCT_TOPIC_NAMES)):
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False)
            await consumer.start()
            try:
                partitions = [TopicPartition(t, p) for t in topics for p in range(BY_NAME[t].partitions)]
                consumer.assign(partitions)
                ends = await consumer.end_offsets(partitions)
                await consumer.commit({tp: OffsetAndMetadata(offset, "") for tp, offset in ends.items()})
            finally:
                await consumer.stop()

    def renderer(self, settings: Settings, *, job_seconds: float, fail_marker: str | None = None,
                 transient_marker: str | None = None, crash_trigger: Path | None = None) -> CommandService:
        args = ["--job-seconds", str(job_seconds)]
        if fail_marker:
            args += ["--fail-marker", fail_marker]
        if transient_marker:
            args += ["--transient-marker", transient_marker]
        if crash_trigger is not None:
            args += ["--crash-after-publish", str(crash_trigger)]
        service = CommandService("renderer", "bench.fake_renderer", args, settings, self.log_dir or self.work,
                                 extra_env=AWS_ENV)
        self.services.append(service)
        return service

    def planner(self, settings: Settings) -> Service:
        """``skuvid serve --role planner``, exactly as ``harness.Service`` starts it (dies with this thread)."""
        service = CommandService("planner", "skuvid.cli", ["serve", "--role", "planner"], settings,
                                 self.log_dir or self.work)
        self.services.append(service)
        return service

    def check_alive(self) -> None:
        """Record every service that exited without being asked to (each exit once)."""
        for service in list(self.services):
            if not service.alive() and not getattr(service, "_reported", False):
                service._reported = True  # type: ignore[attr-defined]
                if not getattr(service, "_expected_exit", False):
                    self.exits.append((service.role, service.proc.returncode, str(service.log_path)))

    def kill(self, service: Service) -> None:
        service._expected_exit = True  # type: ignore[attr-defined]
        service.kill()

    def restart_broker(self, down_s: float) -> None:
        self.broker = restart_kafka(self.broker, down_s)

    async def lag(self, group: str, topics: list[str]) -> int:
        return sum((await group_lag(self.bootstrap, group, topics)).values())

    async def group_state(self, group: str) -> tuple[str, int]:
        """(state, number of members) of consumer group ``group``, e.g. ("Stable", 2)."""
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            described = (await admin.describe_consumer_groups([group]))[0].to_object()["groups"][0]
        finally:
            await admin.close()
        return described["state"], len(described["members"])

    async def wait_joined(self, settings: Settings, renderers: list[Service], timeout_s: float = 120) -> bool:
        """Until ``renderers`` are up and their group is stable with all of them: inputs sent after this meet
        no start-up rebalance (a scenario about one fault should not also meet another)."""
        from tests.reliability.common import wait_ready

        await wait_ready(renderers, timeout_s)
        return await self.wait_group_stable(settings.renderer_group, len(renderers), timeout_s)

    async def wait_group_stable(self, group: str, members: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if await self.group_state(group) == ("Stable", members):
                    return True
            await asyncio.sleep(0.5)
        return False

    async def wait_lag_zero(self, group: str, topics: list[str], timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                lag = await self.lag(group, topics)
            except Exception:  # noqa: BLE001 - broker briefly unreachable: measure again
                lag = -1
            if lag == 0 or time.monotonic() > deadline:
                return lag
            await asyncio.sleep(0.5)

    async def stop_when_ready(self, timeout_s: float = 30) -> dict[str, int]:
        """``stop_services`` once every live service finished starting (a SIGTERM before a service installed
        its handlers ends it with -15, which says nothing about its drain)."""
        from tests.reliability.common import wait_ready

        with contextlib.suppress(AssertionError):
            await wait_ready([s for s in self.services if s.alive()], timeout_s)
        return self.stop_services()

    def stop_services(self, timeout_s: float = 30) -> dict[str, int]:
        """SIGTERM every live service once (a second SIGTERM during the drain is not part of the contract);
        returns role-N -> exit code of those that were alive (0 expected)."""
        self.check_alive()
        live = [s for s in self.services if s.alive()]
        for service in live:
            service._expected_exit = True  # type: ignore[attr-defined]
            service.proc.terminate()
        codes = {}
        deadline = time.monotonic() + timeout_s
        for i, service in enumerate(live):
            try:
                codes[f"{service.role}-{i}"] = service.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                service.proc.kill()
                codes[f"{service.role}-{i}"] = f"killed after {timeout_s:.0f} s"  # type: ignore[assignment]
                service.proc.wait()
        for service in self.services:
            with contextlib.suppress(Exception):
                service._log.close()
        return codes

    def close(self, *, keep_logs: bool = True) -> None:
        """Stop everything (services killed if still running), the S3 server and the broker."""
        for service in self.services:
            if service.alive():
                service.proc.kill()
                service.proc.wait()
        if self.s3 is not None:
            self.s3.stop()
        self.broker.stop()
        if not keep_logs:
            shutil.rmtree(self.work, ignore_errors=True)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.asynccontextmanager
async def scenario_rig(tag: str, work: Path, shared: Rig | None = None):
    """The rig of one scenario: ``shared`` (begun for it; left running) or a fresh one in ``work`` (closed)."""
    rig = shared if shared is not None else Rig.start(work)
    rig.begin(tag, work)
    try:
        yield rig
    finally:
        for service in rig.services:
            if service.alive():
                service._expected_exit = True  # type: ignore[attr-defined]
                service.proc.kill()
                service.proc.wait()
        if shared is None:
            rig.close()
