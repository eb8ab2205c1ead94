"""The experiment agent on real Apache Kafka: SIGKILLed mid-stream and restarted, its totals are exact.

One seeded engagement stream (with 5 % producer duplicates, keyed by SKU like ``skuvid emit`` does, so the
agent's re-keying by user is exercised) and two bad records go to ``engagement``. The agent runs as a real
process that never commits its offsets, is SIGKILLed once about a third of the stream is booked, and is
restarted: everything is delivered again — every record re-forwarded, every booked event replayed. Then:

* its totals, read back from the table's changelog (what ``skuvid experiment report`` reads), equal *exactly*
  an uninterrupted ``aggregate.apply`` replay of the re-keyed topic it consumed — duplicates re-forwarded after
  the crash and cell writes replayed from uncommitted offsets included;
* every count (users, exposures, carts, orders, covariate users … per arm and category) equals the pure
  aggregation of the stream as simulated: each event once, none lost; sums agree to float rounding;
* the bad records are on the dead-letter topic with their reasons.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumers.experiment_agent import PARTITIONS, by_user_topic
from experiments.aggregate import ALL, CELL_FIELDS, Aggregator, Totals, apply
from experiments.changelog import changelog_topic, read_totals
from experiments.simulate import SimulationSpec, simulate_events
from schemas.codec import decode
from schemas.engagement import Arm, EngagementEvent, Experiment
from schemas.events import DeadLetter
from schemas.topics import DEAD_LETTER, ENGAGEMENT
from skuvid.settings import Settings, as_env

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
COUNTS = ("events", "users", "exposures", "plays", "atc_users", "order_users", "add_to_cart", "orders", "cov_users",
          "arm_mismatch")


def only(totals: Totals, experiment_id: str) -> Totals:
    return Totals({k: v for k, v in totals.cells.items() if k[0] == experiment_id})


class Agent:
    def __init__(self, settings: Settings, group: str, work: Path, *args: str) -> None:
        self.log_path = work / f"agent-{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()/kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "consumers.experiment_agent", "--group", group, "--data-dir", str(work / "data"),
             *args],
            env={**os.environ, **as_env(settings)}, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


async def produce(bootstrap: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(ENGAGEMENT.name, key=k, value=v) for k, v in records])
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, partitions: int) -> list:
    """Every record of ``topic`` up to its current end, partition by partition, in offset order. (``earliest``:
    an automatic reset to "latest" racing ``seek_to_beginning`` would otherwise skip everything.)"""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        out = {tp: [] for tp in tps}
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                out[tp].extend(r for r in records if r.offset < ends[tp])
        return [r for tp in tps for r in out[tp]]
    finally:
        await consumer.stop()


async def _end_offsets(bootstrap: str, topic: str, partitions: int) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        return sum((await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])).values())
    finally:
        await consumer.stop()


def changelog_records(bootstrap: str, group: str) -> int:
    """How many table changes the agent has written so far (cheap: end offsets only)."""
    return asyncio.run(_end_offsets(bootstrap, changelog_topic(group), PARTITIONS))


async def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: (await consumer.committed(TopicPartition(topic, p))) or 0 for p in range(partitions)}
    finally:
        await consumer.stop()


def replayed_after_restart(bootstrap: str, group: str) -> int:
    """Records of the re-keyed topic past the committed offsets whose effects are already in the changelog: the
    restarted agent receives them again and must not book them twice."""
    committed = asyncio.run(_committed(bootstrap, group, by_user_topic(group), PARTITIONS))
    seen: dict[str, set] = {}
    for record in asyncio.run(read_topic(bootstrap, changelog_topic(group), PARTITIONS)):
        key = orjson.loads(orjson.loads(record.key))
        if key[0] == "u" and record.value is not None:
            seen[orjson.dumps(key).decode()] = set(orjson.loads(record.value)["recent"])
    again = 0
    for record in asyncio.run(read_topic(bootstrap, by_user_topic(group), PARTITIONS)):
        if record.offset >= committed[record.partition]:
            event = orjson.loads(record.value)
            user = orjson.dumps(["u", event["experiment_id"], event["user_id"]]).decode()
            again += event["event_id"] in seen.get(user, ())
    return again


def booked(bootstrap: str, group: str, experiment_id: str) -> Totals:
    try:
        return only(asyncio.run(read_totals({"bootstrap_servers": bootstrap}, changelog_topic(group))), experiment_id)
    except LookupError:
        return Totals()


def events_booked(totals: Totals, experiment_id: str) -> int:
    return int(sum(totals.cell(experiment_id, arm, ALL).events for arm in ("control", "video")))


def wait_for(predicate, agent: Agent, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert agent.proc.poll() is None, f"agent exited:\n{agent.log()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{agent.log()}"
        time.sleep(0.1)


def test_restart_mid_stream_gives_identical_totals_and_counts_each_event_once(kafka_broker, tmp_path: Path):
    run = uuid.uuid4().hex[:8]
    experiment_id, group = f"exp-agent-{run}", f"experiments-{run}"
    experiment = Experiment(
        experiment_id=experiment_id, starts_at=datetime(2026, 12, 1, tzinfo=UTC),
        ends_at=datetime(2026, 12, 4, tzinfo=UTC),
        arms=[Arm(arm_id="control", variant_id="none", weight=0.5), Arm(arm_id="video", variant_id="v", weight=0.5)],
    )
    events = simulate_events(SimulationSpec(experiment, users=2500, days=3, add_to_cart={"video": 0.189},
                                            duplicate_rate=0.05, seed=21))
    distinct = len({e.event_id for e in events})
    assert distinct < len(events)
    bad = [(b"k", b"{not json " + run.encode()), (b"k", orjson.dumps({"event_id": f"bad-{run}", "kind": "dwell"}))]
    records = [(e.sku.encode(), e.model_dump_json(exclude_none=True).encode()) for e in events]
    bootstrap = kafka_broker.bootstrap
    settings = Settings(kafka_bootstrap=bootstrap, session_timeout_ms=6000, heartbeat_interval_ms=1000)
    asyncio.run(produce(bootstrap, records[:50] + bad + records[50:]))

    first = Agent(settings, group, tmp_path, "--commit-every", "1000000", "--commit-interval", "600")  # never commits
    try:  # about three table changes per event: kill about a third of the way through
        wait_for(lambda: changelog_records(bootstrap, group) > distinct, first, 120, "a third of the stream")
    finally:
        first.kill()
    at_kill = events_booked(booked(bootstrap, group, experiment_id), experiment_id)
    assert 0 < at_kill < distinct, "the agent was not killed mid-stream: make the stream longer"
    replays = replayed_after_restart(bootstrap, group)
    assert replays >= at_kill  # every booked event comes again (and every record is re-forwarded)

    second = Agent(settings, group, tmp_path)
    try:
        wait_for(lambda: events_booked(booked(bootstrap, group, experiment_id), experiment_id) >= distinct,
                 second, 180, "the whole stream")
        time.sleep(3)  # anything still in flight would now overcount
        agent_totals = booked(bootstrap, group, experiment_id)
    finally:
        second.stop()

    forwarded = asyncio.run(read_topic(bootstrap, by_user_topic(group), PARTITIONS))
    replay: dict = {}
    for record in forwarded:
        event = decode(ENGAGEMENT, record.value)
        assert isinstance(event, EngagementEvent)
        if event.experiment_id == experiment_id:
            apply(replay, event, record.partition, record.offset)
    assert agent_totals == only(Totals.from_state(replay.items()), experiment_id)  # exact, floats included

    expected = Aggregator().add_all(events).totals()
    assert events_booked(agent_totals, experiment_id) == distinct
    assert len([r for r in forwarded if experiment_id.encode() in r.value]) > len(events)  # re-forwarded after the kill
    for arm in ("control", "video"):
        for row in [ALL, *expected.categories(experiment_id)]:
            got, want = agent_totals.cell(experiment_id, arm, row), expected.cell(experiment_id, arm, row)
            for name in CELL_FIELDS:
                if name in COUNTS:
                    assert getattr(got, name) == getattr(want, name), (arm, row, name)
                else:
                    assert getattr(got, name) == pytest.approx(getattr(want, name), rel=1e-9), (arm, row, name)

    dead_records = asyncio.run(read_topic(bootstrap, DEAD_LETTER.name, DEAD_LETTER.partitions))
    dead = [decode(DEAD_LETTER, r.value, max_bytes=16 << 20) for r in dead_records]
    ours = {d.reason.value for d in dead if isinstance(d, DeadLetter) and d.topic == ENGAGEMENT.name
            and (run.encode() in base64.b64decode(d.value_b64))}
    assert ours == {"invalid_json", "schema_violation"}

    # The listing API serves the same report from the same changelog (GET /v1/experiments/{id}).
    from api.errors import ApiProblem
    from api.experiments import ExperimentReports
    from experiments.report import analyse, as_dict
    from schemas.engagement import ExperimentCatalog

    declared = tmp_path / "experiments.json"
    declared.write_text(ExperimentCatalog(experiments=[experiment]).model_dump_json())
    reports = ExperimentReports(settings.model_copy(update={"experiments_file": declared,
                                                            "experiments_group": group}))
    served = asyncio.run(reports.report(experiment_id))
    local = as_dict(analyse(experiment, agent_totals, "test"))
    assert served["arms"] == local["arms"] and served["results"] == local["results"]
    with pytest.raises(ApiProblem) as unknown:
        asyncio.run(reports.report("no-such-experiment"))
    assert (unknown.value.status, unknown.value.reason) == (404, "unknown_experiment")
