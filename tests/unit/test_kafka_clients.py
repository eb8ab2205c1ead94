"""skuvid.kafka_clients: the connection options of every protocol, and the password kept out of reprs and logs.

faust's own conversion (``credentials_to_aiokafka_auth``, what its consumers, producers and topic creation
use) is applied to ``faust_options``, so the planner is shown to connect exactly like the aiokafka clients.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import faust
import pytest
import trustme
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import SaslPlainAuthenticator
from aiokafka.protocol.admin import SaslAuthenticateRequest_v1
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from schemas.events import Reason
from skuvid.errors import FatalError
from skuvid.kafka_clients import MASK, aiokafka_options, faust_options
from skuvid.settings import Settings

PASSWORD = "Pa55-unit-test-secret"
BOOTSTRAP = "10.0.0.1:9093,10.0.0.2:9093"


@pytest.fixture(scope="module")
def cafile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


def _settings(protocol: str, cafile: Path | None = None, **fields) -> Settings:
    defaults = {"kafka_bootstrap": BOOTSTRAP, "kafka_security_protocol": protocol, "kafka_sasl_username": "skuvid",
                "kafka_sasl_password": PASSWORD, "kafka_ssl_cafile": cafile}  # fmt: skip
    return Settings(**(defaults | fields))


def test_plaintext_has_only_servers_and_protocol() -> None:
    options = aiokafka_options(_settings("PLAINTEXT"))
    assert options == {"bootstrap_servers": ["10.0.0.1:9093", "10.0.0.2:9093"], "security_protocol": "PLAINTEXT"}
    assert faust_options(_settings("PLAINTEXT")) == {"broker": ["kafka://10.0.0.1:9093", "kafka://10.0.0.2:9093"]}


def test_ssl_verifies_the_broker_against_the_ca(cafile: Path) -> None:
    options = aiokafka_options(_settings("SSL", cafile))
    context = options.pop("ssl_context")
    assert options == {"bootstrap_servers": ["10.0.0.1:9093", "10.0.0.2:9093"], "security_protocol": "SSL"}
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert len(context.get_ca_certs()) == 1  # exactly the configured CA, not the system store


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext_carries_mechanism_and_login_without_tls(mechanism: str) -> None:
    options = aiokafka_options(_settings("SASL_PLAINTEXT", kafka_sasl_mechanism=mechanism))
    assert options["security_protocol"] == "SASL_PLAINTEXT" and "ssl_context" not in options
    assert (options["sasl_mechanism"], options["sasl_plain_username"]) == (mechanism, "skuvid")
    assert options["sasl_plain_password"] == PASSWORD


def test_sasl_ssl_has_login_and_tls(cafile: Path) -> None:
    options = aiokafka_options(_settings("SASL_SSL", cafile))
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert isinstance(options["ssl_context"], ssl.SSLContext)


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
async def test_every_aiokafka_client_accepts_the_options(protocol: str, cafile: Path) -> None:
    options = aiokafka_options(_settings(protocol, cafile))
    producer, consumer, admin = (client(**options)  # a misspelt or unsupported keyword raises TypeError here
                                 for client in (AIOKafkaProducer, AIOKafkaConsumer, AIOKafkaAdminClient))  # fmt: skip
    await producer.stop()  # none was started: this only releases what the constructors allocated
    await consumer.stop()
    await admin.close()


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [("SSL", None), ("SASL_PLAINTEXT", "PLAIN"), ("SASL_PLAINTEXT", "SCRAM-SHA-256"), ("SASL_SSL", "SCRAM-SHA-512")],
)
def test_faust_connects_like_the_aiokafka_clients(protocol: str, mechanism: str | None, cafile: Path) -> None:
    settings = _settings(protocol, cafile, **({"kafka_sasl_mechanism": mechanism} if mechanism else {}))
    app = faust.App("test-kafka-clients", **faust_options(settings), autodiscover=False)

    faust_auth = credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)

    ours = aiokafka_options(settings)
    assert [str(url) for url in app.conf.broker] == [f"kafka://{s}" for s in ours["bootstrap_servers"]]
    assert faust_auth["security_protocol"] == protocol
    for key in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password"):
        assert faust_auth.get(key) == ours.get(key), key
    assert isinstance(faust_auth.get("ssl_context"), ssl.SSLContext) == ("ssl_context" in ours)


@pytest.mark.parametrize("missing", ["kafka_sasl_username", "kafka_sasl_password"])
def test_sasl_without_login_is_fatal(missing: str) -> None:
    settings = _settings("SASL_SSL", **{missing: None})
    with pytest.raises(FatalError) as caught:
        aiokafka_options(settings)
    assert caught.value.reason is Reason.AUTH_FAILED and "SKUVID_KAFKA_SASL_PASSWORD" in caught.value.message


def test_unreadable_ca_file_is_fatal_tls_failed(tmp_path: Path) -> None:
    with pytest.raises(FatalError) as caught:
        aiokafka_options(_settings("SSL", tmp_path / "missing.pem"))
    assert caught.value.reason is Reason.TLS_FAILED and "missing.pem" in caught.value.message


def test_password_is_in_no_repr_and_no_log_record(cafile: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = _settings("SASL_SSL", cafile)
    options = aiokafka_options(settings)
    credentials = faust_options(settings)["broker_credentials"]

    for text in (repr(settings), str(settings), repr(options), str(options), str(list(options)), repr(credentials)):
        assert PASSWORD not in text
    assert MASK in repr(options)
    assert options["sasl_plain_password"].encode() == PASSWORD.encode()  # the client still gets the real one
    assert caplog.records and not [r for r in caplog.records if PASSWORD in r.getMessage()]


async def test_aiokafka_debug_log_of_a_plain_login_is_masked(caplog: pytest.LogCaptureFixture) -> None:
    """aiokafka.conn logs each request's repr at DEBUG; a SASL/PLAIN authenticate request holds the password."""
    options = aiokafka_options(_settings("SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN"))
    authenticator = SaslPlainAuthenticator(loop=asyncio.get_running_loop(), sasl_plain_username="skuvid",
                                           sasl_plain_password=options["sasl_plain_password"])  # fmt: skip
    payload, _ = await authenticator.step(None)  # the bytes aiokafka sends, as it builds them
    request = SaslAuthenticateRequest_v1(payload)
    assert PASSWORD in repr(request)  # what aiokafka would log unmasked
    caplog.set_level(logging.DEBUG, logger="aiokafka.conn")

    logging.getLogger("aiokafka.conn").debug("Request to %s:%d %d: %s", "10.0.0.1", 9093, 4, request)

    messages = [r.getMessage() for r in caplog.records if r.name == "aiokafka.conn"]
    assert messages and PASSWORD not in messages[-1] and MASK in messages[-1]


@pytest.mark.parametrize(("codec", "expected"), [("zstd", "zstd"), ("lz4", "lz4"), ("none", None)])
def test_producers_compress_with_the_configured_codec(codec: str, expected: str | None) -> None:
    """Every skuvid producer (the planner's builds on the publisher's) gets the codec, and aiokafka has it."""
    from consumers.planner_service import producer_config as planner_producer_config
    from producers.publisher import producer_config

    settings = Settings(kafka_compression=codec)
    assert producer_config(settings)["compression_type"] == expected
    assert planner_producer_config(settings)["compression_type"] == expected

    async def make() -> AIOKafkaProducer:
        return AIOKafkaProducer(**producer_config(settings))  # refuses a codec whose library is missing

    assert asyncio.run(make())._compression_type == expected
    assert Settings().kafka_compression == "zstd"
