"""The one place that turns ``Settings`` into Kafka connection options, for every client skuvid creates.

The publisher's producer, the renderer's consumer, the admin clients, the planner's clients and the experiment
agent's faust app must all connect the same way: a security setting added here reaches each of them, and a
client built elsewhere cannot silently fall back to PLAINTEXT. ``check_kafka_access`` is the preflight a service runs first, because
aiokafka never raises *why* it could not connect: a wrong password or an untrusted CA only shows in its log as
``Unable connect to …`` followed by ``KafkaConnectionError: Unable to bootstrap``, which reads as "broker
down, retry" — a crash loop that never names the cause.

Secrets: the SASL password leaves its ``SecretStr`` only inside the option dicts built here, as a ``str``
whose ``repr`` is masked, so logging an options dict (or a faust ``SASLCredentials``) shows no password.
aiokafka logs every request at DEBUG, and a SASL/PLAIN authenticate request carries the password in clear;
a filter on its connection logger masks it there too.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from aiokafka import errors as kafka_errors
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.helpers import create_ssl_context

from schemas.events import Reason
from skuvid.errors import FatalError, TransientError
from skuvid.settings import Settings

log = logging.getLogger(__name__)

SSL_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
MASK = "**********"
_AIOKAFKA_CONN_LOGGER = "aiokafka.conn"  # logs each request's repr at DEBUG, SASL/PLAIN bytes included
_FIRST_PAUSE_S, _MAX_PAUSE_S = 0.25, 2.0  # between preflight attempts while no server answers
_DEFAULT_PORT = 9092  # what aiokafka assumes for a bootstrap server given without a port
# What the broker or aiokafka raises when the credentials (or the mechanism) are refused.
_AUTH_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.SaslAuthenticationFailed,
    kafka_errors.AuthenticationFailedError,
    kafka_errors.AuthenticationMethodNotSupported,
    kafka_errors.UnsupportedSaslMechanismError,
    kafka_errors.IllegalSaslStateError,  # SASL spoken to a listener that does not expect it
)


class _Secret(str):
    """A password as the ``str`` clients need, whose ``repr`` (dicts, dataclasses, tracebacks) is masked."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(MASK)


class _MaskSecret(logging.Filter):
    """Replaces one secret, plain or as it appears in a ``bytes`` repr, in every record of one logger."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self._forms = {secret, repr(secret.encode())[2:-1]}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(form in message for form in self._forms):
            for form in self._forms:
                message = message.replace(form, MASK)
            record.msg, record.args = message, None
        return True


_masked_secrets: set[str] = set()


def _mask_in_aiokafka_logs(secret: str) -> None:
    """Install (once per secret) the filter that keeps the password out of aiokafka's DEBUG request log."""
    if secret and secret not in _masked_secrets:
        logging.getLogger(_AIOKAFKA_CONN_LOGGER).addFilter(_MaskSecret(secret))
        _masked_secrets.add(secret)


def bootstrap_list(settings: Settings) -> list[str]:
    """``kafka_bootstrap`` ("host:port,host:port") as a list, blanks dropped."""
    return [server.strip() for server in settings.kafka_bootstrap.split(",") if server.strip()]


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL (None otherwise): verifies the broker against ``kafka_ssl_cafile``
    (the system CAs when unset) with hostname checks, and presents the client certificate for mutual TLS.

    Raises ``FatalError(tls_failed)`` when a file cannot be read or is not PEM: no retry can fix that.
    """
    if settings.kafka_security_protocol not in SSL_PROTOCOLS:
        return None
    files = {"cafile": settings.kafka_ssl_cafile, "certfile": settings.kafka_ssl_certfile,
             "keyfile": settings.kafka_ssl_keyfile}  # fmt: skip
    try:
        return create_ssl_context(**files)
    except (OSError, ssl.SSLError, ValueError) as exc:
        named = ", ".join(f"{name}={path}" for name, path in files.items() if path is not None) or "system CAs"
        raise FatalError(f"cannot load the Kafka TLS files ({named}): {_one_line(exc)}",
                         reason=Reason.TLS_FAILED, details={"files": named}) from exc  # fmt: skip


def _sasl_login(settings: Settings) -> tuple[str, _Secret]:
    """Username and password of SASL_PLAINTEXT / SASL_SSL; both must be set (``FatalError(auth_failed)``)."""
    secret = settings.kafka_sasl_password
    if not settings.kafka_sasl_username or secret is None or not secret.get_secret_value():
        raise FatalError(
            f"{settings.kafka_security_protocol} needs SKUVID_KAFKA_SASL_USERNAME and SKUVID_KAFKA_SASL_PASSWORD",
            reason=Reason.AUTH_FAILED,
        )
    password = _Secret(secret.get_secret_value())
    _mask_in_aiokafka_logs(password)
    return settings.kafka_sasl_username, password


def security_options(settings: Settings) -> dict[str, Any]:
    """The security keyword arguments shared by AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient
    (aiokafka 0.14 spells them alike in all three)."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in SASL_PROTOCOLS:
        username, password = _sasl_login(settings)
        options |= {"sasl_mechanism": settings.kafka_sasl_mechanism, "sasl_plain_username": username,
                    "sasl_plain_password": password}  # fmt: skip
    if protocol in SSL_PROTOCOLS:
        options["ssl_context"] = ssl_context(settings)
    return options


def aiokafka_options(settings: Settings) -> dict[str, Any]:
    """Connection options for any aiokafka client: ``bootstrap_servers`` plus ``security_options``."""
    return {"bootstrap_servers": bootstrap_list(settings), **security_options(settings)}


def compression_type(settings: Settings) -> str | None:
    """The producers' ``compression_type`` (aiokafka's and faust's spelling: None for no compression)."""
    return None if settings.kafka_compression == "none" else settings.kafka_compression


def faust_options(settings: Settings) -> dict[str, Any]:
    """``broker`` and ``broker_credentials`` for ``faust.App`` (faust-streaming 0.15).

    faust derives the protocol from the credentials' type: ``SASLCredentials`` is SASL_PLAINTEXT, or
    SASL_SSL when given an ``ssl_context``; ``SSLCredentials`` is SSL; none is PLAINTEXT. Its aiokafka driver
    hands the mechanism (SCRAM included), username, password and context to every consumer, producer and
    topic-creating client it builds. ``SASLCredentials``'s repr shows only the username.
    """
    import faust  # noqa: PLC0415  # only the experiment agent needs faust

    options: dict[str, Any] = {"broker": [f"kafka://{server}" for server in bootstrap_list(settings)]}
    protocol = settings.kafka_security_protocol
    if protocol in SASL_PROTOCOLS:
        username, password = _sasl_login(settings)
        options["broker_credentials"] = faust.SASLCredentials(
            username=username, password=password, mechanism=settings.kafka_sasl_mechanism,
            ssl_context=ssl_context(settings),
        )  # fmt: skip
    elif protocol == "SSL":
        options["broker_credentials"] = faust.SSLCredentials(ssl_context(settings))
    return options


def faust_app_options(settings: Settings) -> dict[str, Any]:
    """What every skuvid ``faust.App`` shares: the connection (``faust_options``), at-least-once with acks=all
    and the delivery timeout, the group timeouts of the other clients, topics declared by the app itself."""
    return {
        **faust_options(settings),
        "processing_guarantee": "at_least_once",
        "topic_replication_factor": settings.kafka_replication_factor,
        "consumer_auto_offset_reset": "earliest",
        "table_standby_replicas": 0,
        "producer_acks": -1,
        "producer_request_timeout": settings.kafka_delivery_timeout_ms / 1000,
        "broker_session_timeout": settings.session_timeout_ms / 1000,
        "broker_heartbeat_interval": settings.heartbeat_interval_ms / 1000,
        "broker_rebalance_timeout": 2 * settings.session_timeout_ms / 1000,
        "web_enabled": False,
        "autodiscover": False,
        "topic_allow_declare": True,
    }


# --- preflight -----------------------------------------------------------------------------------------


async def check_kafka_access(settings: Settings, timeout_s: float = 20.0) -> None:
    """Connect as every client will and list the topics; return when that works within ``timeout_s``.

    Raises ``FatalError`` — ``auth_failed`` (credentials or mechanism refused) or ``tls_failed`` (untrusted
    CA, bad certificate, unreadable TLS files) — as soon as the cause is known: retrying cannot fix it.
    Raises ``TransientError(broker_unavailable)`` when no bootstrap server answered in time. Messages are
    one line naming the cause and the bootstrap servers, never the password.
    """
    options = aiokafka_options(settings)  # FatalError here: missing credentials, unreadable TLS files
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last_cause, pause = "no attempt finished", _FIRST_PAUSE_S
    while (remaining := deadline - loop.time()) > 0:
        try:
            async with asyncio.timeout(remaining):
                await _list_topics(options, remaining)
                return
        except (kafka_errors.KafkaError, OSError, TimeoutError) as exc:
            last_cause = _one_line(exc)
        # aiokafka keeps the reason in its log: ask each server directly, the way its clients connect.
        for server in options["bootstrap_servers"]:
            last_cause = await _diagnose(settings, options, server, deadline - loop.time()) or last_cause
        await asyncio.sleep(min(pause, max(deadline - loop.time(), 0)))
        pause = min(2 * pause, _MAX_PAUSE_S)
    raise TransientError(
        f"no Kafka broker at {settings.kafka_bootstrap} answered within {timeout_s:.0f} s "
        f"({settings.kafka_security_protocol}): {last_cause}",
        reason=Reason.BROKER_UNAVAILABLE, details=_details(settings),
    )  # fmt: skip


async def _list_topics(options: dict[str, Any], timeout_s: float) -> None:
    admin = AIOKafkaAdminClient(**options, request_timeout_ms=max(int(timeout_s * 1000), 1000))
    try:
        await admin.start()
        await admin.list_topics()
    finally:
        await admin.close()


async def _diagnose(settings: Settings, options: dict[str, Any], server: str, timeout_s: float) -> str | None:
    """One direct connection (TCP, TLS handshake with the same context, SASL) to ``server``.

    ``aiokafka.conn.create_conn`` is the routine aiokafka's clients connect with, so this is exactly their
    handshake; unlike their bootstrap, which logs the error and raises "Unable to bootstrap", it raises the
    real cause (``SSLCertVerificationError``, ``SaslAuthenticationFailed``, ``ConnectionRefusedError`` …).
    Raises ``FatalError`` for a TLS or authentication failure; returns the cause of any other failure (the
    server may come up later), or None when the connection worked.
    """
    if timeout_s <= 0:
        return None
    host, _, port = server.rpartition(":")
    conn_options = {k: v for k, v in options.items() if k != "bootstrap_servers"}
    conn_options["request_timeout_ms"] = max(int(timeout_s * 1000), 1000)
    try:
        async with asyncio.timeout(timeout_s):
            conn = await create_conn(host or server, int(port or _DEFAULT_PORT), **conn_options)
        conn.close()
        return None
    except ssl.SSLError as exc:
        raise _fatal(settings, server, Reason.TLS_FAILED, "TLS handshake failed", exc) from exc
    except _AUTH_ERRORS as exc:
        user = f"user {settings.kafka_sasl_username!r} ({settings.kafka_sasl_mechanism})"
        raise _fatal(settings, server, Reason.AUTH_FAILED, f"authentication of {user} failed", exc) from exc
    except (kafka_errors.KafkaError, OSError, TimeoutError) as exc:
        return f"{server}: {_one_line(exc)}"


def _fatal(settings: Settings, server: str, reason: Reason, what: str, exc: BaseException) -> FatalError:
    return FatalError(
        f"Kafka {what} at {server} (bootstrap {settings.kafka_bootstrap}, {settings.kafka_security_protocol}): "
        f"{_one_line(exc)}",
        reason=reason, details={**_details(settings), "server": server},
    )  # fmt: skip


def _details(settings: Settings) -> dict[str, Any]:
    return {"bootstrap": settings.kafka_bootstrap, "security_protocol": settings.kafka_security_protocol}


def _one_line(exc: BaseException) -> str:
    text, name = " ".join(str(exc).split()), type(exc).__name__
    if not text:
        return name
    return text if name in text else f"{name}: {text}"
