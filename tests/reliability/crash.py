"""``crash``: renderers SIGKILLed at random moments, and exactly between publish and commit.

N requests go to ``renderers`` fake-model renderers; K times a random renderer that is up is killed — at a
random moment from outside (``kill -9``), or, every other time, by its own fault injection right after the
broker acknowledged an outcome and before the offset commit — and restarted at once, as an orchestrator would.
Every request must end with exactly one outcome (a repeated ``video.ready`` of the same video is allowed, two
different videos are not), with one stored object per request key whose hash the event announces.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

from tests.reliability.accounting import account, catalog_products, plan_requests
from tests.reliability.common import READY_LINE, Phases, join_then_request, result
from tests.reliability.profiles import Crash
from tests.reliability.rig import REQUEST_TOPIC_NAMES, Rig, Tap, scenario_rig


async def working_slots(slots: list, timeout_s: float = 60) -> list[int]:
    """Indexes of the renderers that are up (logged that they are ready); waits until there is one."""
    deadline = time.monotonic() + timeout_s
    while True:
        up = [i for i, s in enumerate(slots) if s.alive() and READY_LINE["renderer"] in s.log()]
        if up or time.monotonic() > deadline:
            return up or list(range(len(slots)))
        await asyncio.sleep(0.2)


async def run(work: Path, p: Crash, shared: Rig | None = None) -> dict:
    phases = Phases()
    async with scenario_rig("crash", work, shared) as rig:
        tap = Tap(rig.bootstrap)
        try:
            settings = rig.settings()
            await rig.skip_history(settings)
            requests = plan_requests(settings, catalog_products(p.requests, rig.sku_prefix))
            keys = {r.request_key for r in requests}
            triggers = [work / f"crash-after-publish-{slot}" for slot in range(p.renderers)]
            slots = [rig.renderer(settings, job_seconds=p.job_seconds, crash_trigger=t) for t in triggers]
            await join_then_request(rig, tap, phases, slots, settings, requests)

            rng = random.Random(p.seed)
            kills: list[dict] = []
            for k in range(p.kills):
                await asyncio.sleep(rng.uniform(*p.kill_gap_s))
                rig.check_alive()
                working = await working_slots(slots)  # kill renderers at work, not ones still starting
                slot = rng.choice(working)
                victim = slots[slot]
                mode = "after_publish" if k % 2 else "random"
                if mode == "after_publish":
                    triggers[slot].touch()
                    deadline = time.monotonic() + 10
                    while victim.alive() and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                    if victim.alive():  # it published nothing in time (idle or restarting): kill it from outside
                        triggers[slot].unlink(missing_ok=True)
                        mode = "random_fallback"
                if victim.alive():
                    rig.kill(victim)
                else:
                    victim._expected_exit = True  # type: ignore[attr-defined]  # its own fault injection
                    victim.proc.wait()
                kills.append({"at_s": round(time.monotonic() - phases.started, 1), "slot": slot, "mode": mode,
                              "outcomes_so_far": len(tap.outcome_keys() & keys)})
                slots[slot] = rig.renderer(settings, job_seconds=p.job_seconds, crash_trigger=triggers[slot])
            phases.mark("kills")

            complete = await tap.wait_for(lambda: keys <= tap.outcome_keys(), p.timeout_s, alive=rig.check_alive)
            phases.mark("complete")
            lag = await rig.wait_lag_zero(settings.renderer_group, REQUEST_TOPIC_NAMES, 60)
            await asyncio.sleep(2)  # late duplicates, if any, arrive now
            exit_codes = await rig.stop_when_ready()
            books = account(requests, tap.ready(), tap.failed(), rig.s3.objects(), sku_prefix=rig.sku_prefix)
            phases.mark("stop_and_account")
        finally:
            await tap.stop()
    after_publish = sum(1 for k in kills if k["mode"] == "after_publish")
    checks = {
        "all_outcomes": complete, "none_lost": books.lost == 0, "all_ready": books.ready == len(keys),
        "one_video_per_key": books.duplicate_objects == 0 and books.both == 0,
        "stored_is_announced": books.announced_not_stored == 0 and books.missing_objects == 0,
        "kills_done": len(kills) == p.kills, "no_crash": not rig.exits, "lag_zero": lag == 0,
        "clean_exit": all(code == 0 for code in exit_codes.values()),
    }
    return result("crash", books, crashes=len(rig.exits), checks=checks, started=phases.started,
                  renderers=p.renderers, job_seconds=p.job_seconds, kills=len(kills),
                  kills_after_publish=after_publish, redelivered_ready=books.duplicate_ready_events, lag=lag,
                  exit_codes=exit_codes, unexpected_exits=rig.exits, phases=phases.seconds, kill_log=kills)
