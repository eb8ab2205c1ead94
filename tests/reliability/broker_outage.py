"""``broker``: the Kafka broker stops mid-run for ``down_s`` seconds and restarts on the same data and port.

The planner and two fake-model renderers run throughout; half the products are sent before the outage, half
after it. Nobody restarts a service: they must reconnect by themselves, every product must get its request
and every request its video, with nothing lost and no second, different video.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from schemas.topics import PRODUCT_CREATED
from tests.reliability.accounting import account, catalog_products, plan_requests
from tests.reliability.common import Phases, result, wait_ready
from tests.reliability.profiles import BrokerOutage
from tests.reliability.rig import PRODUCT_TOPIC_NAMES, REQUEST_TOPIC_NAMES, Producer, Rig, Tap, scenario_rig


async def run(work: Path, p: BrokerOutage, shared: Rig | None = None) -> dict:
    phases = Phases()
    async with scenario_rig("broker", work, shared) as rig:
        tap = Tap(rig.bootstrap)
        try:
            settings = rig.settings()
            await rig.skip_history(settings)
            products = catalog_products(p.products, rig.sku_prefix)
            requests = plan_requests(settings, products)
            keys = {r.request_key for r in requests}
            services = [rig.planner(settings)] + [rig.renderer(settings, job_seconds=p.job_seconds)
                                                  for _ in range(p.renderers)]
            phases.mark("rig")
            await wait_ready(services)
            await rig.wait_joined(settings, services[1:])
            phases.mark("services")
            await tap.start()
            half = len(products) // 2
            async with Producer(rig.bootstrap) as producer:
                await producer.events(PRODUCT_CREATED, products[:half])
            await tap.wait_for(lambda: len(tap.outcome_keys() & keys) >= max(1, half // 3), p.timeout_s,
                               alive=rig.check_alive)
            before = len(tap.outcome_keys() & keys)
            phases.mark("before_outage")
            down_at = time.monotonic()
            rig.restart_broker(p.down_s)  # blocks this loop: nothing of ours reads meanwhile, as intended
            back_at = time.monotonic()
            phases.mark("outage")
            async with Producer(rig.bootstrap) as producer:
                await producer.events(PRODUCT_CREATED, products[half:])
            complete = await tap.wait_for(lambda: keys <= tap.outcome_keys(), p.timeout_s, alive=rig.check_alive)
            done_at = time.monotonic()
            phases.mark("after_outage")
            planner_lag = await rig.wait_lag_zero(settings.planner_group, PRODUCT_TOPIC_NAMES, 60)
            renderer_lag = await rig.wait_lag_zero(settings.renderer_group, REQUEST_TOPIC_NAMES, 60)
            await asyncio.sleep(2)
            exit_codes = await rig.stop_when_ready()
            books = account(requests, tap.ready(), tap.failed(), rig.s3.objects(), sku_prefix=rig.sku_prefix)
            planned = [r.request_key for r in tap.requests() if r.sku.startswith(rig.sku_prefix)]
            phases.mark("stop_and_account")
        finally:
            await tap.stop()
    unexpected = sorted(set(planned) - keys)
    checks = {
        "all_outcomes": complete, "none_lost": books.lost == 0, "all_ready": books.ready == len(keys),
        "one_video_per_key": books.duplicate_objects == 0 and books.both == 0,
        "stored_is_announced": books.announced_not_stored == 0 and books.missing_objects == 0,
        "planned_as_expected": not unexpected and keys <= set(planned),
        "no_crash": not rig.exits, "lag_zero": planner_lag == 0 and renderer_lag == 0,
        "clean_exit": all(code == 0 for code in exit_codes.values()),
    }
    return result("broker", books, crashes=len(rig.exits), checks=checks, started=phases.started, down_s=p.down_s,
                  broker_unreachable_s=round(back_at - down_at, 1), outcomes_before_outage=before,
                  recovered_in_s=round(done_at - back_at, 1), products=len(products),
                  duplicate_requests=len(planned) - len(set(planned)), unexpected_requests=len(unexpected),
                  planner_lag=planner_lag, renderer_lag=renderer_lag, exit_codes=exit_codes,
                  unexpected_exits=rig.exits, phases=phases.seconds)
