"""``/metrics``, ``/healthz`` and ``/readyz`` on one port, served from a daemon thread.

The server runs in its own thread (stdlib ``ThreadingHTTPServer``), not on the asyncio event loop, so it
answers while the loop is blocked — which is exactly when ``/healthz`` must say so. A check is a function
``() -> (ok, detail)`` called in the server's thread on each request: it must be quick and only read state
(a timestamp, a flag), never touch the event loop or the network.

* ``/healthz`` (liveness: restart me) — every liveness check, e.g. ``LoopHeartbeat`` (the event loop runs)
  and ``StallWatch`` (no render has run longer than ``render_stall_s``).
* ``/readyz`` (readiness) — every liveness check and every readiness check, e.g. the ``Readiness`` flags
  (model loaded, partitions assigned, producer connected …): a process that is not alive is not ready.

Both answer ``{"status": "ok"|"fail", "checks": {name: {"ok": bool, "detail": str}}}`` with 200 or 503; a
check that raises fails with the exception as its detail. Other paths: 404 with a JSON body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from schemas.events import Reason
from skuvid.errors import FatalError

log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]


class HealthServerError(FatalError):
    """The health/metrics port cannot be opened: the process cannot be probed, so it must not run."""

    reason = Reason.INTERNAL_ERROR


class HealthServer:
    """HTTP server for ``/metrics`` (``registry``), ``/healthz`` and ``/readyz``.

    ``port`` 0 picks a free port (tests); after ``start()`` the ``port`` attribute is the bound one. Checks
    may be added before or after ``start()``; their names are unique across liveness and readiness.
    """

    def __init__(self, port: int, registry: CollectorRegistry, host: str = "0.0.0.0") -> None:
        self.host = host
        self.port = port
        self.registry = registry
        self._liveness: dict[str, Check] = {}
        self._readiness: dict[str, Check] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- checks ---------------------------------------------------------------------------------------

    def add_liveness(self, name: str, check: Check) -> None:
        self._add(self._liveness, name, check)

    def add_readiness(self, name: str, check: Check) -> None:
        self._add(self._readiness, name, check)

    def _add(self, into: dict[str, Check], name: str, check: Check) -> None:
        with self._lock:
            if name in self._liveness or name in self._readiness:
                raise ValueError(f"health check {name!r} is already registered")
            into[name] = check

    def liveness(self) -> tuple[bool, dict]:
        """``(ok, body)`` of ``/healthz``."""
        with self._lock:
            checks = dict(self._liveness)
        return _evaluate(checks)

    def readiness(self) -> tuple[bool, dict]:
        """``(ok, body)`` of ``/readyz``: liveness checks first, then readiness checks."""
        with self._lock:
            checks = {**self._liveness, **self._readiness}
        return _evaluate(checks)

    # ---- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> HealthServer:
        """Bind and serve in a daemon thread; raises ``HealthServerError`` naming the port if it cannot bind."""
        if self._httpd is not None:
            raise RuntimeError("HealthServer already started")
        server_class = _server_class(self.host)
        try:
            httpd = server_class((self.host, self.port), _Handler)
        except OSError as exc:
            raise HealthServerError(
                f"cannot serve /metrics, /healthz and /readyz on {self.host}:{self.port} "
                f"(SKUVID_METRICS_PORT): {exc.strerror or exc}",
                details={"host": self.host, "port": self.port},
            ) from exc
        httpd.health = self  # type: ignore[attr-defined]  # the handler's way back to the checks
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"skuvid-health-{self.port}", daemon=True)
        self._thread.start()
        log.info("serving /metrics, /healthz and /readyz on %s:%d", self.host, self.port)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HealthServer:
        return self if self._httpd is not None else self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _evaluate(checks: dict[str, Check]) -> tuple[bool, dict]:
    results = {}
    for name, check in checks.items():
        try:
            ok, detail = check()
        except Exception as exc:  # noqa: BLE001 - a broken check is a failed check, reported, not a 500
            ok, detail = False, f"check raised {exc!r}"
        results[name] = {"ok": bool(ok), "detail": str(detail)}
    ok = all(r["ok"] for r in results.values())
    return ok, {"status": "ok" if ok else "fail", "checks": results}


def _server_class(host: str) -> type[ThreadingHTTPServer]:
    if ":" not in host:
        return ThreadingHTTPServer
    return type("ThreadingHTTPServerV6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})


class _Handler(BaseHTTPRequestHandler):
    server_version = "skuvid-health"
    timeout = 10  # a client that stops sending does not hold a thread for ever

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._respond(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._respond(send_body=False)

    def _respond(self, *, send_body: bool) -> None:
        health: HealthServer = self.server.health  # type: ignore[attr-defined]
        path = urlsplit(self.path).path.rstrip("/") or "/"
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, content_type, encoder(health.registry), send_body)
        elif path in ("/healthz", "/livez"):
            ok, body = health.liveness()
            self._send_json(200 if ok else 503, body, send_body)
        elif path == "/readyz":
            ok, body = health.readiness()
            self._send_json(200 if ok else 503, body, send_body)
        else:
            self._send_json(404, {"status": "fail", "error": f"no such path {path!r}",
                                  "paths": ["/metrics", "/healthz", "/readyz"]}, send_body)

    def _send_json(self, status: int, body: dict, send_body: bool) -> None:
        self._send(status, "application/json", json.dumps(body).encode(), send_body)

    def _send(self, status: int, content_type: str, payload: bytes, send_body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        log.debug("%s " + format, self.address_string(), *args)  # probes every few seconds: not INFO


# ---- reusable checks ------------------------------------------------------------------------------------


class LoopHeartbeat:
    """Liveness of an asyncio event loop: a task stamps a monotonic time every ``interval_s``; the check fails
    once the stamp is older than ``max_age_s`` (the loop is blocked, or the task died).

    Start it on the loop to watch: ``heartbeat.start()`` from a coroutine running there, or
    ``await heartbeat.run()`` as a task of its own (faust: ``@app.task``). Before it first runs, the check
    fails: nothing shows yet that the loop is alive.
    """

    def __init__(self, max_age_s: float = 10.0, *, interval_s: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if interval_s >= max_age_s:
            raise ValueError(f"interval_s ({interval_s}) must be below max_age_s ({max_age_s})")
        self.max_age_s = max_age_s
        self.interval_s = interval_s
        self.clock = clock
        self.last_beat: float | None = None
        self._task: asyncio.Task | None = None

    async def run(self) -> None:
        while True:
            self.last_beat = self.clock()
            await asyncio.sleep(self.interval_s)

    def start(self) -> asyncio.Task:
        """Run the heartbeat as a task of the running loop (call from a coroutine on that loop)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="skuvid-loop-heartbeat")
        return self._task

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def check(self) -> tuple[bool, str]:
        last = self.last_beat
        if last is None:
            return False, "heartbeat not started"
        age = self.clock() - last
        if age > self.max_age_s:
            return False, f"event loop blocked: last ran {age:.1f} s ago (limit {self.max_age_s:g} s)"
        return True, f"event loop ran {age:.1f} s ago"

    __call__ = check


class StallWatch:
    """Liveness of a job runner: fails while one job has been running longer than ``limit_s``.

    The runner calls ``started(key)`` before a job and ``finished()`` after it (or uses ``with
    watch.job(key):``). One job at a time: a second ``started`` replaces the first.
    """

    def __init__(self, limit_s: float, *, what: str = "render", clock: Callable[[], float] = time.monotonic) -> None:
        self.limit_s = limit_s
        self.what = what
        self.clock = clock
        self._current: tuple[str, float] | None = None  # one attribute: read and written atomically

    def started(self, key: str) -> None:
        self._current = (key, self.clock())

    def finished(self) -> None:
        self._current = None

    @contextmanager
    def job(self, key: str) -> Iterator[None]:
        self.started(key)
        try:
            yield
        finally:
            self.finished()

    def check(self) -> tuple[bool, str]:
        current = self._current
        if current is None:
            return True, "idle"
        key, since = current
        running = self.clock() - since
        if running > self.limit_s:
            return False, f"{self.what} {key} stalled: running {running:.0f} s (limit {self.limit_s:g} s)"
        return True, f"{self.what} {key} running {running:.0f} s"

    __call__ = check


class Readiness:
    """Named readiness flags set by the service (``model_loaded``, ``partitions_assigned`` …), all False at
    first. ``register(server)`` adds one readiness check per flag; setting a name that was not declared is
    an error (a typo would otherwise leave the pod unready for ever)."""

    def __init__(self, *names: str) -> None:
        if not names:
            raise ValueError("Readiness needs at least one flag name")
        self._flags: dict[str, tuple[bool, str]] = {name: (False, "not yet") for name in names}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._flags)

    def set(self, name: str, ready: bool = True, detail: str = "") -> None:
        if name not in self._flags:
            raise KeyError(f"unknown readiness flag {name!r}; declared: {', '.join(self._flags)}")
        self._flags[name] = (ready, detail or ("ok" if ready else "not yet"))

    def clear(self, name: str, detail: str = "") -> None:
        self.set(name, False, detail)

    def is_set(self, name: str) -> bool:
        return self._flags[name][0]

    def check(self, name: str) -> Check:
        if name not in self._flags:
            raise KeyError(f"unknown readiness flag {name!r}; declared: {', '.join(self._flags)}")
        return lambda: self._flags[name]

    def register(self, server: HealthServer) -> None:
        for name in self._flags:
            server.add_readiness(name, self.check(name))
