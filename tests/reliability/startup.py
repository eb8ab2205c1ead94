"""``startup``: the planner started against a fresh broker, again and again, with events in its first second.

Each run starts a new Apache Kafka with no topics at all, then the planner (which creates its topics, its
changelogs and its fan-out topic before any agent starts). Half the products are sent the moment the planner
process starts (they land as soon as ``product.created`` exists, before its first assignment), the other half
the moment it reports its tables recovered, and every product once more, unchanged, right after that. The
planner must plan each product exactly once (the second copy is deduplicated), dead-letter nothing and fail
nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from schemas.topics import DEAD_LETTER, PRODUCT_CREATED, REQUEST_TOPICS, VIDEO_FAILED
from skuvid.brokers import KafkaBroker
from tests.integration.harness import REPO_ROOT, CommandService
from tests.reliability.accounting import catalog_products
from tests.reliability.common import Phases, result, wait_log
from tests.reliability.profiles import Startup
from tests.reliability.rig import Producer, Tap, suite_settings

OUTPUTS = [DEAD_LETTER.name, VIDEO_FAILED.name, *(t.name for t in REQUEST_TOPICS)]


async def topics_exist(bootstrap: str, names: list[str], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            await admin.start()
            if set(names) <= set(await admin.list_topics()):
                return True
        except Exception:  # noqa: BLE001 - the broker is still starting
            pass
        finally:
            await admin.close()
        await asyncio.sleep(0.1)
    return False


async def one_start(work: Path, p: Startup, run: int) -> dict:
    broker = KafkaBroker.start(work / "kafka", repo_root=REPO_ROOT)
    planner = None
    tap = None
    try:
        settings = suite_settings(broker.bootstrap, work, planner_group=f"planner-start-{run}", shutdown_grace_s=10.0)
        products = catalog_products(p.products, f"U{run}x{int(time.time())}", images=False)
        again = [e.model_copy(update={"event_id": f"{e.event_id}-again", "occurred_at": datetime.now(UTC)})
                 for e in products]
        half = len(products) // 2
        spawned = time.monotonic()
        planner = CommandService("planner", "skuvid.cli", ["serve", "--role", "planner"], settings, work)
        async with Producer(broker.bootstrap) as producer:
            early = asyncio.create_task(producer.events(PRODUCT_CREATED, products[:half]))  # waits for the topic
            ready_s = await wait_log(planner, "planner ready", p.timeout_s)
            await producer.events(PRODUCT_CREATED, products[half:])
            await early
            await asyncio.sleep(0.5)
            await producer.events(PRODUCT_CREATED, again)
        first_event_s = None
        await topics_exist(broker.bootstrap, OUTPUTS, 30)
        tap = Tap(broker.bootstrap, OUTPUTS, from_start=True)
        await tap.start()
        skus = {e.sku for e in products}
        await tap.wait_for(lambda: skus <= {r.sku for r in tap.requests()}, p.timeout_s,
                           alive=lambda: None if planner.alive() else (_ for _ in ()).throw(AssertionError(
                               f"planner exited:\n{planner.log()[-2000:]}")))
        await asyncio.sleep(3)  # a duplicate, if any, comes now
        per_sku = Counter(r.sku for r in tap.requests() if r.sku in skus)
        first = min((s.at for t in tap.seen for s in tap.seen[t]), default=None)
        first_event_s = round(first - spawned, 1) if first else None
        alive = planner.alive()
        planner.proc.terminate()
        code = planner.proc.wait(timeout=30)
        return {"run": run, "dead_letters": len(tap.dead_letters()), "failed": len(tap.failed()),
                "requests": sum(per_sku.values()), "products": len(skus),
                "duplicate_requests": sum(n - 1 for n in per_sku.values() if n > 1),
                "missing": len(skus - set(per_sku)), "ready_after_s": round(ready_s, 1),
                "first_output_after_s": first_event_s, "alive": alive, "exit_code": code,
                "dead_letter_reasons": dict(Counter(d.reason.value for d in tap.dead_letters())),
                "log": str(planner.log_path)}
    finally:
        if tap is not None:
            await tap.stop()
        if planner is not None and planner.alive():
            planner.proc.kill()
            planner.proc.wait()
        broker.stop()


async def run(work: Path, p: Startup, shared=None) -> dict:  # noqa: ARG001 - always its own fresh brokers
    phases = Phases()
    runs = []
    for i in range(p.runs):
        try:
            runs.append(await one_start(work / f"run-{i}", p, i))
        except Exception as exc:  # noqa: BLE001 - one failed start is a result, the others still run
            runs.append({"run": i, "error": f"{type(exc).__name__}: {exc}"[:2000]})
    phases.mark("runs")
    ok = [r for r in runs if "error" not in r]
    totals = {k: sum(r[k] for r in ok) for k in ("dead_letters", "failed", "duplicate_requests", "missing",
                                                 "requests", "products")}
    checks = {
        "every_run_completed": len(ok) == p.runs, "no_dead_letters": totals["dead_letters"] == 0,
        "no_duplicate_requests": totals["duplicate_requests"] == 0, "no_failures": totals["failed"] == 0,
        "every_product_planned": totals["missing"] == 0,
        "no_crash": all(r["alive"] for r in ok), "clean_exit": all(r["exit_code"] == 0 for r in ok),
    }
    return result("startup", None, crashes=sum(1 for r in ok if not r["alive"]), checks=checks,
                  started=phases.started, requests=totals["requests"], ready=0, failed=totals["failed"],
                  lost=totals["missing"], runs=p.runs, products_per_run=p.products,
                  dead_letters=totals["dead_letters"], duplicate_requests=totals["duplicate_requests"],
                  planner_ready_s=[r.get("ready_after_s") for r in ok], per_run=runs, phases=phases.seconds)
