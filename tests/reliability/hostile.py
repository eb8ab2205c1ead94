"""``hostile``: thousands of generated bad records on the planner's and the renderer's input topics.

A seeded generator (``hostile_inputs``) writes invalid UTF-8, truncated and deeply nested JSON, huge strings,
wrong types, control/bidi characters and SSRF image URLs aimed at a loopback canary onto ``product.created``,
``product.updated`` and ``video.requested``. Every record must end somewhere with a reason — the dead-letter
topic (traced by topic/partition/offset), ``video.failed`` (by event id or request key), or, for a valid and
harmless product, a normal request that itself gets an outcome. The canary must see no connection at all, no
process may exit, and both groups' lag must return to 0.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from pathlib import Path

from schemas.topics import PRODUCT_CREATED, PRODUCT_UPDATED, VIDEO_REQUESTED
from tests.reliability.accounting import catalog_products, plan_requests
from tests.reliability.common import Phases, result, wait_ready
from tests.reliability.hostile_inputs import Hostile, generate
from tests.reliability.profiles import Hostile as HostileParams
from tests.reliability.rig import PRODUCT_TOPIC_NAMES, REQUEST_TOPIC_NAMES, Producer, Rig, Tap, scenario_rig


class Canary:
    """A TCP listener on every local address (dual-stack ``::``, else ``0.0.0.0``) that records each connection
    it accepts: any connection means an image fetch reached an internal address."""

    def __init__(self) -> None:
        try:
            self.sock = socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True)
        except OSError:
            self.sock = socket.create_server(("0.0.0.0", 0))
        self.port = self.sock.getsockname()[1]
        self.connections: list[dict] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(0.5)
                first = b""
                with contextlib.suppress(OSError):
                    first = conn.recv(200)
                self.connections.append({"peer": str(peer[0]), "first_bytes": first[:120].decode("latin-1")})

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class Trace:
    """Where each hostile record ended, from what the tap read."""

    def __init__(self, tap: Tap) -> None:
        self.tap = tap

    def outcomes(self, records: list[Hostile], positions: list[tuple[str, int, int]]) -> list[str | None]:
        dead = {(d.topic, d.partition, d.offset): d.reason.value for d in self.tap.dead_letters()}
        failed_by_source = {f.source_event_id: f.reason.value for f in self.tap.failed() if f.source_event_id}
        failed_by_key = {f.request_key: f.reason.value for f in self.tap.failed() if f.request_key}
        requested = {r.source_event_id for r in self.tap.requests()}
        ready = {r.request_key for r in self.tap.ready()}
        out: list[str | None] = []
        for record, position in zip(records, positions, strict=True):
            if position in dead:
                out.append(f"dead_letter:{dead[position]}")
            elif record.topic != VIDEO_REQUESTED.name and record.event_id in failed_by_source:
                out.append(f"failed:{failed_by_source[record.event_id]}")
            elif record.topic != VIDEO_REQUESTED.name and record.event_id in requested:
                out.append("requested")
            elif record.topic == VIDEO_REQUESTED.name and record.request_key in failed_by_key:
                out.append(f"failed:{failed_by_key[record.request_key]}")
            elif record.topic == VIDEO_REQUESTED.name and record.request_key in ready:
                out.append("ready")
            else:
                out.append(None)
        return out

    def planned_pending(self, event_ids: set[str]) -> tuple[int, int]:
        """(requests the planner made from hostile products, how many of them still have no outcome)."""
        planned = {r.request_key for r in self.tap.requests() if r.source_event_id in event_ids}
        return len(planned), len(planned - self.tap.outcome_keys())


async def run(work: Path, p: HostileParams, shared: Rig | None = None) -> dict:
    phases = Phases()
    canary = Canary()
    async with scenario_rig("hostile", work, shared) as rig:
        tap = Tap(rig.bootstrap)
        try:
            settings = rig.settings(image_timeout_s=2.0, max_attempts=3, retry_backoff_s=0.2,
                                    retry_backoff_max_s=1.0)
            await rig.skip_history(settings)
            template = plan_requests(settings, catalog_products(1, rig.sku_prefix, images=False))[0]
            records = generate(p.records, seed=p.seed, canary_port=canary.port, request=template,
                               max_oversized=max(1, p.records // 1000))
            services = [rig.planner(settings)] + [rig.renderer(settings, job_seconds=p.job_seconds)
                                                  for _ in range(p.renderers)]
            phases.mark("generate")
            await wait_ready(services)
            await rig.wait_joined(settings, services[1:])
            phases.mark("services")
            await tap.start()
            positions: list[tuple[str, int, int] | None] = [None] * len(records)
            async with Producer(rig.bootstrap) as producer:
                for topic in (PRODUCT_CREATED.name, PRODUCT_UPDATED.name, VIDEO_REQUESTED.name):
                    index = [i for i, r in enumerate(records) if r.topic == topic]
                    sent = await producer.raw(topic, [(records[i].key, records[i].value) for i in index])
                    for i, meta in zip(index, sent, strict=True):
                        positions[i] = (topic, meta.partition, meta.offset)
            phases.mark("produce")
            trace = Trace(tap)
            product_ids = {r.event_id for r in records if r.event_id}

            def settled() -> bool:
                return None not in trace.outcomes(records, positions) and trace.planned_pending(product_ids)[1] == 0

            complete = await tap.wait_for(settled, p.timeout_s, alive=rig.check_alive, every_s=2.0)
            phases.mark("settled")
            planner_lag = await rig.wait_lag_zero(settings.planner_group, PRODUCT_TOPIC_NAMES, 60)
            renderer_lag = await rig.wait_lag_zero(settings.renderer_group, REQUEST_TOPIC_NAMES, 60)
            rig.check_alive()
            exit_codes = await rig.stop_when_ready()
            outcomes = trace.outcomes(records, positions)
            planned, planned_pending = trace.planned_pending(product_ids)
            phases.mark("stop")
        finally:
            await tap.stop()
            canary.close()
    by_kind: dict[str, Counter] = {}
    for record, outcome in zip(records, outcomes, strict=True):
        by_kind.setdefault(record.kind, Counter())[(outcome or "NONE").split(":")[0]] += 1
    ends = Counter((o or "NONE").split(":")[0] for o in outcomes)
    reasons = Counter(o.split(":", 1)[1] for o in outcomes if o and ":" in o)
    planned_keys = {r.request_key for r in tap.requests() if r.source_event_id in product_ids}
    second_stage = Counter(f.reason.value for f in tap.failed() if f.request_key in planned_keys)
    second_stage["ready"] = len({r.request_key for r in tap.ready()} & planned_keys)
    internal = reasons.get("internal_error", 0) + second_stage.get("internal_error", 0)
    produced = {pos for pos in positions if pos is not None}
    undecodable = [u for u in tap.undecodable if u not in produced]  # our own hostile requests do not count
    samples = [{"kind": r.kind, "message": f.message[:300], "details": dict(list(f.details.items())[:4])}
               for r in records for f in tap.failed()
               if f.reason.value == "internal_error" and (f.source_event_id == r.event_id and r.event_id
                                                         or f.request_key == r.request_key and r.request_key)][:10]
    unaccounted = [{"kind": r.kind, "topic": r.topic, "value_head": (r.value or b"")[:80].decode("latin-1")}
                   for r, o in zip(records, outcomes, strict=True) if o is None]
    checks = {
        "every_record_accounted": complete and not unaccounted and planned_pending == 0,
        "canary_untouched": not canary.connections, "no_crash": not rig.exits,
        "no_internal_errors": internal == 0, "lag_zero": planner_lag == 0 and renderer_lag == 0,
        "outputs_decode": not undecodable,
        "clean_exit": all(code == 0 for code in exit_codes.values()),
    }
    return result("hostile", None, crashes=len(rig.exits), checks=checks, started=phases.started,
                  records=len(records), requests=planned + sum(1 for r in records if r.topic == VIDEO_REQUESTED.name),
                  ready=len(tap.ready()), failed=ends.get("failed", 0), lost=len(unaccounted) + planned_pending,
                  dead_letters=ends.get("dead_letter", 0), normal_requests=ends.get("requested", 0),
                  planner_requests=planned, planner_requests_without_outcome=planned_pending,
                  planner_request_outcomes=dict(second_stage),
                  reasons=dict(reasons.most_common()), outcomes_by_kind={k: dict(v) for k, v in by_kind.items()},
                  canary_connections=len(canary.connections), canary_log=canary.connections[:10],
                  internal_errors=internal, internal_error_samples=samples, undecodable_outputs=undecodable[:10],
                  unaccounted=unaccounted[:10], planner_lag=planner_lag,
                  renderer_lag=renderer_lag, exit_codes=exit_codes, unexpected_exits=rig.exits,
                  phases=phases.seconds)
