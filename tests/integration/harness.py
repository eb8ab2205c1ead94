"""Run skuvid's services as real processes against a broker, and read their output topics."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.codec import decode
from schemas.topics import BY_NAME
from skuvid.settings import Settings, as_env

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = REPO_ROOT / "tests" / "data"


def service_settings(bootstrap: str, work: Path, **overrides) -> Settings:
    """Settings for services under test: the tiny model at the CPU preview size, unique consumer groups."""
    run = uuid.uuid4().hex[:8]
    values = {
        "kafka_bootstrap": bootstrap,
        "planner_group": f"planner-{run}",
        "renderer_group": f"renderer-{run}",
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
        "model": "tiny",
        "tiny_model_dir": REPO_ROOT / ".cache" / "tiny-wan2.2",
        "resolution": "240p",
        "duration_s": 2.0,
        "steps": 2,
        "guidance_scale": 1.0,
        "quality_max_attempts": 1,
        "clip_model": "tiny",
        "tiny_clip_dir": REPO_ROOT / ".cache" / "tiny-clip",
        "quality_clip_text_min": None,
        "quality_clip_image_min": None,
        "quality_publish_best_below_gate": True,
        "local_store_dir": work / "cdn",
        "planner_data_dir": work / "planner",
        "image_file_root": REPO_ROOT,
        "render_policy": "eager",  # render every plan at once; the listing API's tests pass "auto"
    }
    settings = Settings(**(values | overrides))
    asyncio.run(start_groups_at_end(settings))
    return settings


async def start_groups_at_end(settings: Settings) -> None:
    """Commit today's end offsets for the settings' fresh consumer groups, so the services a test starts see
    what that test produces, not every record earlier tests left on the session's broker."""
    from aiokafka.structs import OffsetAndMetadata

    from schemas.topics import INPUT_TOPICS, REQUEST_TOPICS
    from skuvid.kafka_clients import aiokafka_options

    for group, topics in ((settings.planner_group, INPUT_TOPICS), (settings.renderer_group, REQUEST_TOPICS)):
        consumer = AIOKafkaConsumer(**aiokafka_options(settings), group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = [TopicPartition(t.name, p) for t in topics for p in range(t.partitions)]
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            await consumer.commit({tp: OffsetAndMetadata(offset, "") for tp, offset in ends.items()})
        finally:
            await consumer.stop()


class Service:
    """One ``skuvid serve --role ROLE`` process with its log in a file."""

    def __init__(self, role: str, settings: Settings, log_dir: Path) -> None:
        self.role = role
        self.log_path = log_dir / f"{role}-{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "skuvid.cli", "serve", "--role", role],
            env={**os.environ, **as_env(settings)}, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for_log(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            assert self.alive(), f"{self.role} exited:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"{self.role} never logged {text!r}:\n{self.log()[-3000:]}"
            time.sleep(0.2)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._log.close()

    def stop(self, timeout_s: float = 60) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code


async def produce_raw(bootstrap: str, topic: str, values: list[bytes], keys: list[bytes | None] | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=8 * 1_048_576)
    await producer.start()
    try:
        for i, value in enumerate(values):
            await producer.send_and_wait(topic, value=value, key=keys[i] if keys else None)
    finally:
        await producer.stop()


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(BY_NAME[topic].partitions)]
        return {tp.partition: off for tp, off in (await consumer.end_offsets(partitions)).items()}
    finally:
        await consumer.stop()


async def read_until(bootstrap: str, topics: list[str], done: Callable[[list], bool], timeout_s: float,
                     raw: bool = False) -> list:
    """Every record of ``topics`` from the start (decoded events, or raw records) until ``done(records)``."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    seen: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while not done(seen) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                seen.extend(records if raw else [decode(r.topic, r.value, max_bytes=16 << 20) for r in records])
    finally:
        await consumer.stop()
    return seen


def run(coro):
    return asyncio.run(coro)


# --- helpers of the reliability suite (tests/reliability) ---------------------------------------------------


class CommandService(Service):
    """A service process started as ``python -m MODULE ARGS`` (e.g. ``bench.fake_renderer``), with Settings in
    its environment plus ``extra_env`` (credentials meant for this child only); same handle as ``Service``.
    It gets SIGTERM when the thread that started it ends, so an interrupted run leaves no service behind."""

    def __init__(self, role: str, module: str, args: list[str], settings: Settings, log_dir: Path,
                 extra_env: dict[str, str] | None = None) -> None:
        self.role = role
        self.log_path = log_dir / f"{role}-{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env={**os.environ, **as_env(settings), **(extra_env or {})}, stdout=self._log, stderr=subprocess.STDOUT,
            cwd=REPO_ROOT, preexec_fn=_die_with_parent,  # noqa: PLW1509 - it only calls prctl(2)
        )


def _die_with_parent() -> None:
    from skuvid.brokers import _die_with_parent as die_with_parent

    die_with_parent()


def restart_kafka(broker, down_s: float):
    """Stop ``broker`` (a ``KafkaBroker``), keep it down ``down_s`` seconds, start it again on the same work
    folder (data kept) and the same port; returns the new handle. Call from the thread that started the first
    one (brokers die with the thread that spawned them)."""
    from skuvid.brokers import KafkaBroker

    broker.stop()
    time.sleep(down_s)
    return KafkaBroker.start(broker.work_dir, repo_root=REPO_ROOT, port=broker.port)


async def group_lag(bootstrap: str, group: str, topics: list[str]) -> dict[tuple[str, int], int]:
    """``(topic, partition) -> end offset - committed offset`` of consumer group ``group`` over every partition
    of ``topics``, committed offsets read with an admin client (a partition never committed counts from 0)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in range(BY_NAME[t].partitions)]
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    done = {(tp.topic, tp.partition): meta.offset for tp, meta in committed.items() if meta.offset >= 0}
    return {(tp.topic, tp.partition): max(0, end - done.get((tp.topic, tp.partition), 0)) for tp, end in ends.items()}


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (psutil when installed, else VmRSS of /proc/PID/status)."""
    try:
        import psutil
    except ModuleNotFoundError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise ProcessLookupError(pid) from None
    return int(psutil.Process(pid).memory_info().rss)
