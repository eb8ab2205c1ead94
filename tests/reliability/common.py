"""Small pieces every scenario uses: waiting for a log line, the opening of a renderer scenario, and the shape
of a scenario's result."""

from __future__ import annotations

import asyncio
import time

from schemas.events import VideoRequested
from schemas.topics import VIDEO_REQUESTED
from tests.integration.harness import Service
from tests.reliability.accounting import Books
from tests.reliability.rig import Producer, Rig, Tap

READY_LINE = {"renderer": "renderer ready", "planner": "planner ready"}  # tables recovered


async def wait_log(service: Service, text: str, timeout_s: float) -> float:
    """Seconds until ``service`` logged ``text``; raises if it exits or the time runs out."""
    started = time.monotonic()
    while text not in service.log():
        if not service.alive():
            raise AssertionError(f"{service.role} exited with {service.proc.returncode} before logging {text!r}:\n"
                                 f"{service.log()[-3000:]}")
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{service.role} never logged {text!r} in {timeout_s:.0f} s:\n{service.log()[-3000:]}")
        await asyncio.sleep(0.2)
    return time.monotonic() - started


async def wait_ready(services: list[Service], timeout_s: float = 120) -> None:
    await asyncio.gather(*(wait_log(s, READY_LINE[s.role], timeout_s) for s in services))


class Phases:
    """Wall time of a scenario's phases, for the report: ``mark(name)`` ends the phase running since the last."""

    def __init__(self) -> None:
        self.started = self._last = time.monotonic()
        self.seconds: dict[str, float] = {}

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = round(now - self._last, 1)
        self._last = now


async def join_then_request(rig: Rig, tap: Tap, phases: Phases, renderers: list[Service], settings,
                            requests: list[VideoRequested]) -> None:
    """The opening of a renderer scenario: phase ``rig`` ends, the renderers join their group (phase
    ``services``), the outcome tap starts, then every request is produced to ``video.requested``."""
    phases.mark("rig")
    await rig.wait_joined(settings, renderers)
    phases.mark("services")
    await tap.start()
    async with Producer(rig.bootstrap) as producer:
        await producer.events(VIDEO_REQUESTED, requests)


def result(scenario: str, books: Books | None, *, crashes: int, checks: dict[str, bool], started: float,
           **figures) -> dict:
    """One entry of out/reliability.json: the common fields, the scenario's figures and its named checks."""
    common = books.figures() if books is not None else {
        "requests": 0, "ready": 0, "failed": 0, "lost": 0, "duplicate_objects": 0}
    entry = {"scenario": scenario, **{k: common[k] for k in ("requests", "ready", "failed", "lost",
                                                             "duplicate_objects")},
             "crashes": crashes, "passed": all(checks.values()), "seconds": round(time.monotonic() - started, 1)}
    entry |= figures
    entry["books"] = {k: v for k, v in common.items() if k not in entry}
    entry["checks"] = checks
    return entry
