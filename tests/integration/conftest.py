"""Fixtures of the integration tests alone (the shared ones live in tests/conftest.py).

``secure_kafka``: the same real Apache Kafka as ``kafka_broker``, plus a SASL_SSL listener as production
clusters have — SCRAM-SHA-512 over TLS, with a CA and broker certificate made by ``trustme`` for this session
only — so the tests prove that every client skuvid builds connects through ``skuvid.kafka_clients``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from schemas.topics import ALL_TOPICS
from skuvid.brokers import KafkaBroker, SaslSslListener, create_topics
from skuvid.kafka_clients import security_options
from skuvid.settings import Settings
from tests.conftest import REPO_ROOT

SCRAM_MECHANISM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class SecureKafka:
    """A running broker's SASL_SSL side: where it listens, the CA that signed it, and its one SCRAM user."""

    broker: KafkaBroker
    bootstrap: str  # the SASL_SSL listener; broker.bootstrap is the PLAINTEXT one
    cafile: Path
    username: str
    password: str = field(repr=False)

    def fields(self) -> dict[str, Any]:
        """The ``Settings`` fields that reach this broker over SASL_SSL."""
        return {
            "kafka_bootstrap": self.bootstrap,
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": SCRAM_MECHANISM,
            "kafka_sasl_username": self.username,
            "kafka_sasl_password": self.password,
            "kafka_ssl_cafile": self.cafile,
        }

    def settings(self, **overrides: Any) -> Settings:
        """Settings that reach this broker over SASL_SSL; ``overrides`` replace any field (a wrong password…)."""
        return Settings(**(self.fields() | overrides))


def _pkcs8(key_pem: bytes) -> str:
    """trustme writes "traditional" OpenSSL keys; Kafka's PEM keystore reads only PKCS#8."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _listener(ca: trustme.CA, username: str, password: str) -> SaslSslListener:
    leaf = ca.issue_cert("127.0.0.1", "localhost")  # clients check the IP address against the certificate
    return SaslSslListener(
        certificate_chain_pem="".join(blob.bytes().decode() for blob in leaf.cert_chain_pems),
        private_key_pem=_pkcs8(leaf.private_key_pem.bytes()),
        username=username,
        password=password,
        mechanism=SCRAM_MECHANISM,
    )


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    """Apache Kafka 4.x with a SASL_SSL (SCRAM-SHA-512) listener and ALL_TOPICS, created over that listener;
    a fresh CA and a random password per session; stopped after the session."""
    work_dir = tmp_path_factory.mktemp("secure-kafka")
    ca = trustme.CA()
    cafile = work_dir / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    username, password = "skuvid-test", secrets.token_urlsafe(24)
    listener = _listener(ca, username, password)
    with KafkaBroker.start(work_dir / "kafka", repo_root=REPO_ROOT, sasl_ssl=listener) as broker:
        assert broker.sasl_ssl_bootstrap is not None
        secure = SecureKafka(broker, broker.sasl_ssl_bootstrap, cafile, username, password)
        create_topics(secure.bootstrap, ALL_TOPICS, client_options=security_options(secure.settings()))
        yield secure


@pytest.fixture(scope="session")
def untrusted_cafile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second CA, which signed nothing the broker presents."""
    path = tmp_path_factory.mktemp("other-ca") / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path
