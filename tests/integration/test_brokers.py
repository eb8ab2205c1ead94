"""The brokers skuvid starts by itself: real Apache Kafka (marked `kafka`) and the embedded tansu."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import BaseModel

from schemas.topics import ALL_TOPICS, Topic
from skuvid.brokers import (
    KAFKA_LIB_DIR,
    BrokerError,
    BrokerFailure,
    KafkaBroker,
    TansuBroker,
    create_topics,
    free_port,
)
from tests.conftest import REPO_ROOT

N_RECORDS = 60
KEYS = [f"SKU-{i}" for i in range(7)]


def _private_topic(partitions: int = 3) -> Topic:
    """A topic of this test alone, so tests sharing a session broker never see each other's records."""
    return Topic(f"test.brokers.{uuid.uuid4().hex[:10]}", BaseModel, partitions, "test topic")


async def _partition_counts(bootstrap: str, names: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names) if t["error_code"] == 0}
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, *, idempotent: bool) -> list[tuple[str, str]]:
    """N_RECORDS keyed records; linger makes the producer pack several records per batch."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=idempotent, acks="all", linger_ms=20)
    await producer.start()
    sent = [(KEYS[i % len(KEYS)], f"value-{i}") for i in range(N_RECORDS)]
    try:
        futures = [await producer.send(topic, key=k.encode(), value=v.encode()) for k, v in sent]
        for f in futures:
            await f
    finally:
        await producer.stop()
    return sent


async def _consume_assigned(bootstrap: str, topic: str, partitions: int, expected: int) -> list[tuple[str, str, int]]:
    """Read ``expected`` records from the beginning of every partition, without a consumer group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    await consumer.start()
    got: list[tuple[str, str, int]] = []
    try:
        await consumer.seek_to_beginning(*tps)
        while len(got) < expected:
            batches = await consumer.getmany(timeout_ms=10_000)
            assert batches, f"no records within 10 s; have {len(got)} of {expected}"
            for tp, records in batches.items():
                got += [(r.key.decode(), r.value.decode(), tp.partition) for r in records]
    finally:
        await consumer.stop()
    return got


def _assert_round_trip(sent: list[tuple[str, str]], got: list[tuple[str, str, int]]) -> None:
    """Every record exactly once; one key stays on one partition, in send order."""
    assert sorted((k, v) for k, v, _ in got) == sorted(sent)
    for key in KEYS:
        partitions = {p for k, _, p in got if k == key}
        assert len(partitions) == 1, f"{key} spread over partitions {partitions}"
        assert [v for k, v, _ in got if k == key] == [v for k, v in sent if k == key]


# --- real Apache Kafka ---------------------------------------------------------------------------------


@pytest.mark.kafka
@pytest.mark.asyncio
async def test_kafka_has_every_skuvid_topic_with_its_partition_count(kafka_broker: KafkaBroker) -> None:
    counts = await _partition_counts(kafka_broker.bootstrap, [t.name for t in ALL_TOPICS])
    assert counts == {t.name: t.partitions for t in ALL_TOPICS}
    assert kafka_broker.supports_idempotence


@pytest.mark.kafka
@pytest.mark.asyncio
async def test_kafka_idempotent_producer_round_trip_with_exact_end_offsets(kafka_broker: KafkaBroker) -> None:
    topic = _private_topic(partitions=3)
    create_topics(kafka_broker.bootstrap, [topic])
    sent = await _produce(kafka_broker.bootstrap, topic.name, idempotent=True)

    got = await _consume_assigned(kafka_broker.bootstrap, topic.name, topic.partitions, N_RECORDS)
    _assert_round_trip(sent, got)

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_broker.bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic.name, p) for p in range(topic.partitions)]
        end = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    per_partition = {p: sum(1 for *_, q in got if q == p) for p in range(topic.partitions)}
    assert {tp.partition: offset for tp, offset in end.items()} == per_partition
    assert sum(end.values()) == N_RECORDS


@pytest.mark.kafka
@pytest.mark.asyncio
async def test_kafka_consumer_group_commits_and_resumes(kafka_broker: KafkaBroker) -> None:
    topic = _private_topic(partitions=2)
    create_topics(kafka_broker.bootstrap, [topic])
    sent = await _produce(kafka_broker.bootstrap, topic.name, idempotent=True)
    group = f"test-group-{uuid.uuid4().hex[:8]}"

    async def read_group(limit: int) -> list[str]:
        consumer = AIOKafkaConsumer(
            topic.name, bootstrap_servers=kafka_broker.bootstrap, group_id=group,
            enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=limit,
        )  # fmt: skip
        await consumer.start()
        try:
            values: list[str] = []
            while len(values) < limit:
                for records in (await consumer.getmany(timeout_ms=10_000, max_records=limit - len(values))).values():
                    values += [r.value.decode() for r in records]
            await consumer.commit()
            return values
        finally:
            await consumer.stop()

    first = await read_group(20)
    rest = await read_group(N_RECORDS - 20)
    assert sorted(first + rest) == sorted(v for _, v in sent)


@pytest.mark.kafka
def test_create_topics_is_idempotent_and_refuses_another_partition_count(kafka_broker: KafkaBroker) -> None:
    create_topics(kafka_broker.bootstrap, ALL_TOPICS)  # all exist already: no error
    first = ALL_TOPICS[0]
    changed = Topic(first.name, first.model, first.partitions + 1, first.description)
    with pytest.raises(BrokerError) as caught:
        create_topics(kafka_broker.bootstrap, [changed])
    assert caught.value.reason is BrokerFailure.TOPIC_MISMATCH
    assert first.name in str(caught.value)


@pytest.mark.kafka
@pytest.mark.asyncio
async def test_kafka_restart_on_the_same_work_dir_keeps_the_data(tmp_path: Path) -> None:
    topic = _private_topic(partitions=2)
    with KafkaBroker.start(tmp_path, repo_root=REPO_ROOT) as broker:
        create_topics(broker.bootstrap, [topic])
        sent = await _produce(broker.bootstrap, topic.name, idempotent=True)
    assert not broker.is_running()
    broker.stop()  # idempotent

    with KafkaBroker.start(tmp_path, repo_root=REPO_ROOT) as again:
        got = await _consume_assigned(again.bootstrap, topic.name, topic.partitions, N_RECORDS)
    _assert_round_trip(sent, got)


@pytest.mark.kafka
def test_kafka_jars_are_cached_under_the_pom_hash(kafka_broker: KafkaBroker) -> None:
    lib = REPO_ROOT / KAFKA_LIB_DIR
    pom_hash = hashlib.sha256((REPO_ROOT / "deploy/kafka/pom.xml").read_bytes()).hexdigest()
    assert (lib / ".pom.sha256").read_text().strip() == pom_hash
    assert list(lib.glob("kafka_2.13-4.*.jar")) and list(lib.glob("log4j-slf4j2-impl-*.jar"))


@pytest.mark.kafka
def test_kafka_on_a_busy_port_is_refused(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    with pytest.raises(BrokerError) as caught:
        KafkaBroker.start(tmp_path, repo_root=REPO_ROOT, port=kafka_broker.port)
    assert caught.value.reason is BrokerFailure.PORT_IN_USE


# --- tansu ---------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_tansu_has_every_skuvid_topic_with_its_partition_count(tansu_broker: TansuBroker) -> None:
    counts = await _partition_counts(tansu_broker.bootstrap, [t.name for t in ALL_TOPICS])
    assert counts == {t.name: t.partitions for t in ALL_TOPICS}
    assert not tansu_broker.supports_idempotence


@pytest.mark.asyncio
async def test_tansu_round_trip_without_idempotence(tansu_broker: TansuBroker) -> None:
    topic = _private_topic(partitions=3)
    create_topics(tansu_broker.bootstrap, [topic])
    sent = await _produce(tansu_broker.bootstrap, topic.name, idempotent=False)
    got = await _consume_assigned(tansu_broker.bootstrap, topic.name, topic.partitions, N_RECORDS)
    _assert_round_trip(sent, got)


def test_tansu_on_a_busy_port_is_refused(tansu_broker: TansuBroker, tmp_path: Path) -> None:
    with pytest.raises(BrokerError) as caught:
        TansuBroker.start(tmp_path, port=tansu_broker.port)
    assert caught.value.reason is BrokerFailure.PORT_IN_USE


def test_tansu_stop_is_idempotent_and_frees_the_port(tmp_path: Path) -> None:
    port = free_port()
    broker = TansuBroker.start(tmp_path / "a", port=port)
    assert broker.is_running() and broker.bootstrap == f"127.0.0.1:{port}"
    broker.stop()
    broker.stop()
    assert not broker.is_running()
    with TansuBroker.start(tmp_path / "b", port=port) as again:  # the port is free again
        assert again.is_running()
