"""``storage``: the S3 API server stops accepting connections for ``down_s`` seconds mid-run, then returns.

Two fake-model renderers with ``max_attempts`` high enough to outlast the outage and a short backoff cap.
No process may exit; uploads (and the manifest lookups before them) must be retried with backoff, and every
request must end as ``video.ready`` once the store is back: nothing lost, one object per request key.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

from tests.reliability.accounting import account, catalog_products, plan_requests
from tests.reliability.common import Phases, join_then_request, result
from tests.reliability.profiles import StorageOutage
from tests.reliability.rig import REQUEST_TOPIC_NAMES, Rig, Tap, scenario_rig

RETRY_LINE = re.compile(r"attempt (\d+)/(\d+) failed \((\w+):")


async def run(work: Path, p: StorageOutage, shared: Rig | None = None) -> dict:
    phases = Phases()
    async with scenario_rig("storage", work, shared) as rig:
        tap = Tap(rig.bootstrap)
        try:
            settings = rig.settings(max_attempts=p.max_attempts, retry_backoff_s=0.5,
                                    retry_backoff_max_s=p.backoff_max_s)
            await rig.skip_history(settings)
            requests = plan_requests(settings, catalog_products(p.requests, rig.sku_prefix))
            keys = {r.request_key for r in requests}
            renderers = [rig.renderer(settings, job_seconds=p.job_seconds) for _ in range(p.renderers)]
            await join_then_request(rig, tap, phases, renderers, settings, requests)
            await tap.wait_for(lambda: len(tap.outcome_keys() & keys) >= max(1, len(keys) // 4), p.timeout_s,
                               alive=rig.check_alive)
            before = len(tap.outcome_keys() & keys)
            phases.mark("before_outage")
            rig.s3.command("down")
            down_at = time.monotonic()
            while time.monotonic() - down_at < p.down_s:
                rig.check_alive()
                await asyncio.sleep(0.5)
            during = len(tap.outcome_keys() & keys) - before
            rig.s3.command("up")
            up_at = time.monotonic()
            phases.mark("outage")
            complete = await tap.wait_for(lambda: keys <= tap.outcome_keys(), p.timeout_s, alive=rig.check_alive)
            done_at = time.monotonic()
            phases.mark("after_outage")
            lag = await rig.wait_lag_zero(settings.renderer_group, REQUEST_TOPIC_NAMES, 60)
            await asyncio.sleep(1)
            exit_codes = await rig.stop_when_ready()
            retries = [RETRY_LINE.search(line) for s in renderers for line in s.log().splitlines()]
            retries = [m for m in retries if m]
            books = account(requests, tap.ready(), tap.failed(), rig.s3.objects(), sku_prefix=rig.sku_prefix)
            phases.mark("stop_and_account")
        finally:
            await tap.stop()
    storage_retries = [m for m in retries if m.group(3) == "storage_unavailable"]
    max_attempt = max((int(m.group(1)) for m in retries), default=0)
    checks = {
        "all_outcomes": complete, "none_lost": books.lost == 0, "all_ready": books.ready == len(keys),
        "one_video_per_key": books.duplicate_objects == 0 and books.both == 0,
        "stored_is_announced": books.announced_not_stored == 0 and books.missing_objects == 0,
        "uploads_retried": len(storage_retries) > 0, "attempts_left": max_attempt < p.max_attempts,
        "no_process_exit": not rig.exits, "lag_zero": lag == 0,
        "clean_exit": all(code == 0 for code in exit_codes.values()),
    }
    return result("storage", books, crashes=len(rig.exits), checks=checks, started=phases.started,
                  down_s=p.down_s, max_attempts=p.max_attempts, backoff_max_s=p.backoff_max_s,
                  outcomes_before_outage=before, outcomes_during_outage=during,
                  recovered_in_s=round(done_at - up_at, 1), retries=len(retries),
                  storage_retries=len(storage_retries), max_attempt_seen=max_attempt, lag=lag,
                  exit_codes=exit_codes, unexpected_exits=rig.exits, phases=phases.seconds)
