"""``load``: a steady backlog over fake-model renderers at a fixed job time.

After a warm-up (so the first clip's one-off costs — font, encoder, S3 client — are paid) and once the group
is stable, N requests are spread evenly over every partition of the request topics (hot, on-demand, bulk:
18, so up to 18 renderers each get the same share). Throughput must reach 90 % of the
ideal ``renderers / job_seconds`` (what the renderers could do if Kafka, S3, encoding and the service loop
cost nothing), the lag must drain to 0, and each renderer's resident memory must stay flat within 10 %
between the end of the warm-up and the end of the run.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from schemas.topics import REQUEST_TOPICS
from tests.integration.harness import rss_bytes
from tests.reliability.accounting import account, catalog_products, plan_requests
from tests.reliability.common import Phases, result
from tests.reliability.profiles import Load
from tests.reliability.rig import REQUEST_TOPIC_NAMES, Producer, Rig, Tap, scenario_rig

MIN_EFFICIENCY = 0.9
MAX_RSS_GROWTH = 0.10


async def spread(producer: Producer, requests: list) -> None:
    """Send ``requests`` round-robin over every (request topic, partition)."""
    slots = [(t, p) for t in REQUEST_TOPICS for p in range(t.partitions)]
    for topic in REQUEST_TOPICS:
        mine = [(r, p) for i, r in enumerate(requests) for t, p in [slots[i % len(slots)]] if t is topic]
        await producer.events(topic, [r for r, _ in mine], partitions=[p for _, p in mine])


async def run(work: Path, p: Load, shared: Rig | None = None) -> dict:
    phases = Phases()
    async with scenario_rig("load", work, shared) as rig:
        tap = Tap(rig.bootstrap)
        try:
            settings = rig.settings()
            await rig.skip_history(settings)
            warmup_n = p.warmup_per_renderer * p.renderers
            everything = plan_requests(settings, catalog_products(warmup_n + p.requests, rig.sku_prefix, images=False))
            warmup, requests = everything[:warmup_n], everything[warmup_n:]
            renderers = [rig.renderer(settings, job_seconds=p.job_seconds) for _ in range(p.renderers)]
            phases.mark("rig")
            await rig.wait_joined(settings, renderers)
            cold_rss = [rss_bytes(r.proc.pid) for r in renderers]
            phases.mark("services")
            await tap.start()
            async with Producer(rig.bootstrap) as producer:
                await spread(producer, warmup)
                warm_keys = {r.request_key for r in warmup}
                await tap.wait_for(lambda: warm_keys <= tap.outcome_keys(), 300, alive=rig.check_alive)
                stable = await rig.wait_group_stable(settings.renderer_group, p.renderers, 60)
                before_rss = [rss_bytes(r.proc.pid) for r in renderers]
                phases.mark("warmup")
                keys = {r.request_key for r in requests}
                started = time.monotonic()
                await spread(producer, requests)
                produced_s = time.monotonic() - started
            complete = await tap.wait_for(lambda: keys <= tap.outcome_keys(), p.timeout_s, alive=rig.check_alive)
            finished = time.monotonic()
            after_rss = [rss_bytes(r.proc.pid) for r in renderers if r.alive()]
            phases.mark("run")
            lag = await rig.wait_lag_zero(settings.renderer_group, REQUEST_TOPIC_NAMES, 60)
            exit_codes = await rig.stop_when_ready()
            books = account(requests, tap.ready(), tap.failed(), rig.s3.objects(), sku_prefix=rig.sku_prefix,
                            others=warmup)
            phases.mark("stop_and_account")
        finally:
            await tap.stop()
    seconds = finished - started
    ideal = p.renderers / p.job_seconds
    arrivals = sorted(s.at for s in tap.seen["video.ready"] if s.event.request_key in keys)
    # Steady state: videos after the first over the time from the first to the last, so the one job time
    # before anything can come out (and the pipeline filling) is not counted as slowness.
    throughput = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else 0.0
    overall = len(requests) / seconds
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    growth = [round(a / b - 1, 4) for a, b in zip(after_rss, before_rss, strict=False)]
    checks = {
        "all_outcomes": complete, "none_lost": books.lost == 0, "all_ready": books.ready == len(keys),
        "one_video_per_key": books.duplicate_objects == 0, "throughput": throughput >= MIN_EFFICIENCY * ideal,
        "lag_zero": lag == 0, "rss_flat": len(after_rss) == p.renderers and all(abs(g) <= MAX_RSS_GROWTH for g in growth),
        "group_stable": stable, "no_crash": not rig.exits, "clean_exit": all(c == 0 for c in exit_codes.values()),
    }
    mib = 1 << 20
    return result("load", books, crashes=len(rig.exits), checks=checks, started=phases.started,
                  renderers=p.renderers, job_seconds=p.job_seconds, run_s=round(seconds, 1),
                  produce_s=round(produced_s, 2), throughput_per_s=round(throughput, 3), ideal_per_s=round(ideal, 3),
                  efficiency=round(throughput / ideal, 3), throughput_incl_first_job_per_s=round(overall, 3),
                  seconds_per_video_per_renderer=round(seconds * p.renderers / len(requests), 3),
                  median_gap_s=round(statistics.median(gaps), 3) if gaps else None, lag=lag,
                  rss_mib_cold=[round(v / mib, 1) for v in cold_rss],
                  rss_mib_before=[round(v / mib, 1) for v in before_rss],
                  rss_mib_after=[round(v / mib, 1) for v in after_rss], rss_growth=growth,
                  exit_codes=exit_codes, unexpected_exits=rig.exits, phases=phases.seconds)
