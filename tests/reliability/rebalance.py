"""``rebalance``: a renderer joins (a scale-up, or a restarted pod) while long jobs are running.

Not one of the issue's seven scenarios: it isolates what ``crash`` only meets by chance. Two renderers work
on requests whose clips take ``job_seconds``; once both are rendering, a third renderer joins the group, so
partitions move while their records are still being rendered by the old owner. Every request must still end
with exactly one video: the old owner must not publish a video the new owner renders again (two different
videos for one request key, the stored object no longer the announced one).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.reliability.accounting import account, catalog_products, plan_requests
from tests.reliability.common import Phases, join_then_request, result, wait_ready
from tests.reliability.profiles import Rebalance
from tests.reliability.rig import REQUEST_TOPIC_NAMES, Rig, Tap, scenario_rig


async def run(work: Path, p: Rebalance, shared: Rig | None = None) -> dict:
    phases = Phases()
    async with scenario_rig("rebalance", work, shared) as rig:
        tap = Tap(rig.bootstrap)
        try:
            settings = rig.settings()
            await rig.skip_history(settings)
            requests = plan_requests(settings, catalog_products(p.requests, rig.sku_prefix, images=False))
            keys = {r.request_key for r in requests}
            renderers = [rig.renderer(settings, job_seconds=p.job_seconds) for _ in range(2)]
            await join_then_request(rig, tap, phases, renderers, settings, requests)
            joiner = rig.renderer(settings, job_seconds=p.job_seconds)  # joins while the two are rendering
            await wait_ready([joiner])
            joined_at = time.monotonic()
            phases.mark("join")
            complete = await tap.wait_for(lambda: keys <= tap.outcome_keys(), p.timeout_s, alive=rig.check_alive)
            phases.mark("complete")
            lag = await rig.wait_lag_zero(settings.renderer_group, REQUEST_TOPIC_NAMES, 60)
            await asyncio.sleep(2)
            exit_codes = await rig.stop_when_ready()
            commits_skipped = sum(s.log().count("skipped: ") for s in rig.services)
            books = account(requests, tap.ready(), tap.failed(), rig.s3.objects(), sku_prefix=rig.sku_prefix)
            phases.mark("stop_and_account")
        finally:
            await tap.stop()
    outcomes_before_join = sum(1 for s in tap.seen["video.ready"] if s.at < joined_at)
    checks = {
        "all_outcomes": complete, "none_lost": books.lost == 0, "all_ready": books.ready == len(keys),
        "one_video_per_key": books.duplicate_objects == 0 and books.both == 0,
        "stored_is_announced": books.announced_not_stored == 0 and books.missing_objects == 0,
        "no_crash": not rig.exits, "lag_zero": lag == 0,
        "clean_exit": all(code == 0 for code in exit_codes.values()),
    }
    return result("rebalance", books, crashes=len(rig.exits), checks=checks, started=phases.started,
                  job_seconds=p.job_seconds, outcomes_before_join=outcomes_before_join,
                  commits_skipped_logged=commits_skipped, different_video_keys=books.different_video_keys[:5],
                  lag=lag, exit_codes=exit_codes, unexpected_exits=rig.exits, phases=phases.seconds)
