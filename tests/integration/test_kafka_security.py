"""Every Kafka client skuvid builds, against a real broker's SASL_SSL (SCRAM-SHA-512) listener.

The failures matter as much as the success: aiokafka reports a wrong password or an untrusted CA only as
"Unable to bootstrap", so these tests prove that ``check_kafka_access`` names the cause within seconds, and
that a service started with bad credentials exits instead of retrying forever.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import RecordMetadata

from producers.publisher import Publisher
from schemas.codec import decode
from schemas.events import ProductCreated, Reason
from schemas.topics import PRODUCT_CREATED, REQUEST_TOPICS
from skuvid.brokers import free_port
from skuvid.errors import FatalError, TransientError
from skuvid.kafka_clients import aiokafka_options, check_kafka_access
from skuvid.settings import Settings
from tests.conftest import REPO_ROOT
from tests.integration.conftest import SecureKafka
from tests.integration.harness import Service, read_until, run, service_settings

FAIL_WITHIN_S = 30.0
PLANNER_WITHIN_S = 90.0  # the planner's start, group join and table recovery on a shared 2-core machine
CATALOG = REPO_ROOT / "tests" / "data" / "catalog.jsonl"


def _product(event_id: str) -> ProductCreated:
    first = orjson.loads(CATALOG.read_bytes().splitlines()[0])
    return ProductCreated.model_validate(first | {"event_id": event_id})


async def _publish(settings: Settings, event: ProductCreated) -> RecordMetadata:
    publisher = await Publisher.start(settings, source="urn:skuvid:test")
    try:
        return await publisher.publish(PRODUCT_CREATED, event)
    finally:
        await publisher.stop()


async def _read_back(settings: Settings, partition: int, offset: int) -> bytes:
    """The record at ``partition``@``offset`` of product.created, read by a consumer built from the options."""
    consumer = AIOKafkaConsumer(**aiokafka_options(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(PRODUCT_CREATED.name, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        batches = await consumer.getmany(tp, timeout_ms=10_000, max_records=1)
        records = batches.get(tp, [])
        assert records, f"nothing read back from {tp}@{offset}"
        return records[0].value
    finally:
        await consumer.stop()


@pytest.mark.kafka
async def test_publisher_and_consumer_round_trip_over_sasl_ssl(secure_kafka: SecureKafka, caplog) -> None:
    caplog.set_level(logging.DEBUG)  # aiokafka's request log included: the password must not be in it
    settings = secure_kafka.settings()
    event = _product("evt-security-roundtrip")
    sent = await _publish(settings, event)

    value = await _read_back(settings, sent.partition, sent.offset)

    assert decode(PRODUCT_CREATED, value) == event
    authenticated = f"Authenticated as {secure_kafka.username} via SCRAM-SHA-512"
    assert any(authenticated in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if secure_kafka.password in r.getMessage()]


@pytest.mark.kafka
async def test_check_kafka_access_passes_with_the_right_password(secure_kafka: SecureKafka) -> None:
    await check_kafka_access(secure_kafka.settings(), timeout_s=FAIL_WITHIN_S)


@pytest.mark.kafka
async def test_wrong_password_is_fatal_auth_failed(secure_kafka: SecureKafka) -> None:
    wrong = "not-" + secure_kafka.password
    started = time.monotonic()
    with pytest.raises(FatalError) as caught:
        await check_kafka_access(secure_kafka.settings(kafka_sasl_password=wrong), timeout_s=FAIL_WITHIN_S)

    assert time.monotonic() - started < FAIL_WITHIN_S
    error = caught.value
    assert error.reason is Reason.AUTH_FAILED
    assert "authentication" in error.message.lower() and secure_kafka.bootstrap in error.message
    assert "\n" not in error.message and wrong not in error.message and secure_kafka.password not in error.message


@pytest.mark.kafka
async def test_untrusted_ca_is_fatal_tls_failed(secure_kafka: SecureKafka, untrusted_cafile: Path) -> None:
    started = time.monotonic()
    with pytest.raises(FatalError) as caught:
        await check_kafka_access(secure_kafka.settings(kafka_ssl_cafile=untrusted_cafile), timeout_s=FAIL_WITHIN_S)

    assert time.monotonic() - started < FAIL_WITHIN_S
    error = caught.value
    assert error.reason is Reason.TLS_FAILED
    assert "CERTIFICATE_VERIFY_FAILED" in error.message and secure_kafka.bootstrap in error.message
    assert "\n" not in error.message


async def test_unreachable_broker_is_transient_broker_unavailable() -> None:
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        await check_kafka_access(settings, timeout_s=1.5)

    assert 1.5 <= time.monotonic() - started < 5
    assert caught.value.reason is Reason.BROKER_UNAVAILABLE
    assert settings.kafka_bootstrap in caught.value.message


@pytest.mark.kafka
@pytest.mark.parametrize("role", ["renderer", "planner"])
def test_serve_with_a_wrong_password_exits_non_zero_naming_the_cause(secure_kafka: SecureKafka, role: str) -> None:
    settings = secure_kafka.settings()
    env = {
        **os.environ,
        "SKUVID_MODEL": "tiny",
        "SKUVID_TINY_MODEL_DIR": str(REPO_ROOT / ".cache" / "tiny-wan2.2"),
        "SKUVID_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "SKUVID_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "SKUVID_KAFKA_SASL_MECHANISM": settings.kafka_sasl_mechanism,
        "SKUVID_KAFKA_SASL_USERNAME": secure_kafka.username,
        "SKUVID_KAFKA_SASL_PASSWORD": "wrong-password",
        "SKUVID_KAFKA_SSL_CAFILE": str(secure_kafka.cafile),
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "skuvid.cli", "serve", "--role", role],
        cwd=REPO_ROOT, env=env, capture_output=True, timeout=FAIL_WITHIN_S + 30, check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - started

    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode != 0, output[-2000:]
    assert elapsed < FAIL_WITHIN_S, f"took {elapsed:.1f} s"
    assert "authentication" in output.lower(), output[-2000:]
    assert "wrong-password" not in output


@pytest.mark.kafka
def test_planner_plans_over_sasl_ssl(secure_kafka: SecureKafka, tmp_path: Path) -> None:
    """The planner (group consumer, changelog reader, producer, topic creation) through ``security_options``."""
    settings = service_settings(secure_kafka.bootstrap, tmp_path, **secure_kafka.fields())
    event = _product("evt-security-planner")
    planner = Service("planner", settings, tmp_path)
    try:
        run(_publish(settings, event))
        requests = run(read_until(  # on the PLAINTEXT listener: only the planner's connections are under test
            secure_kafka.broker.bootstrap, [t.name for t in REQUEST_TOPICS],
            lambda seen: any(r.sku == event.sku for r in seen), timeout_s=PLANNER_WITHIN_S,
        ))  # fmt: skip
        assert any(r.sku == event.sku for r in requests), planner.log()[-3000:]
    finally:
        planner.stop()
    assert secure_kafka.password not in planner.log()
