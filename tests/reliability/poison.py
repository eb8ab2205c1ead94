"""``poison``: requests that fail every time, with good requests behind them on the same partition.

Each poison SKU key gets, in order, every kind of poison, each followed by good requests of the same SKU
(so the same partition): a broken image (a file that is not an image), a prompt the generator always
refuses (permanent), a prompt the generator always fails on transiently (retried with backoff until
``max_attempts``), and two oversized ones (a ~900 KB image URL, http and file). Poison must end as a bounded
``video.failed`` after bounded attempts; the good requests behind it must complete. A control SKU on
another partition gets only good requests. Reported: how long each poison held its partition, and the
latency of the good requests behind poison next to the control's.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from pathlib import Path

from aiokafka.partitioner import DefaultPartitioner

from schemas.events import VideoRequested
from schemas.topics import VIDEO_REQUESTED
from tests.reliability.accounting import account, catalog_products, plan_requests
from tests.reliability.common import Phases, join_then_request, result
from tests.reliability.profiles import Poison
from tests.reliability.rig import REQUEST_TOPIC_NAMES, Rig, Tap, scenario_rig

FAIL_MARKER = "POISON-RAISE"
TRANSIENT_MARKER = "POISON-TRANSIENT"
OVERSIZED_CHARS = 900_000
MAX_OUTCOME_BYTES = 64 * 1024
KINDS = ("broken_image", "generator_raises", "transient_always", "oversized_http_url", "oversized_file_url")
EXPECTED_REASON = {"broken_image": "image_fetch_failed", "generator_raises": "render_error",
                   "transient_always": "gpu_oom", "oversized_http_url": "image_fetch_failed",
                   "oversized_file_url": "image_fetch_failed"}


def partition_of(sku: str) -> int:
    parts = list(range(VIDEO_REQUESTED.partitions))
    return DefaultPartitioner()(sku.encode(), parts, parts)


def poisoned(good: VideoRequested, kind: str, n: int) -> VideoRequested:
    """A copy of ``good`` (same SKU, so same partition) that fails every time in the way ``kind`` says."""
    update: dict = {"request_key": hashlib.sha256(f"{good.request_key}|{kind}|{n}".encode()).hexdigest()}
    update["event_id"] = f"req-{update['request_key'][:32]}"
    if kind == "broken_image":
        update["image_url"] = "file:tests/data/catalog.jsonl"  # inside the image root, but not an image
    elif kind in ("generator_raises", "transient_always"):
        marker = FAIL_MARKER if kind == "generator_raises" else TRANSIENT_MARKER
        update["prompt"] = good.prompt.model_copy(update={"positive": f"{good.prompt.positive} {marker}"})
        update["image_url"] = None
    elif kind == "oversized_http_url":
        update["image_url"] = "http://" + "a" * OVERSIZED_CHARS + ".example/product.png"
    elif kind == "oversized_file_url":
        update["image_url"] = "file:///nonexistent/" + "a" * OVERSIZED_CHARS + ".png"
    return good.model_copy(update=update)


def control_sku(prefix: str, taken: set[int]) -> str:
    for i in range(1000):
        sku = f"{prefix}-control-{i}"
        if partition_of(sku) not in taken:
            return sku
    raise AssertionError("no SKU on a free partition")


async def run(work: Path, p: Poison, shared: Rig | None = None) -> dict:
    phases = Phases()
    async with scenario_rig("poison", work, shared) as rig:
        tap = Tap(rig.bootstrap)
        try:
            settings = rig.settings(max_attempts=p.max_attempts, retry_backoff_s=0.5, retry_backoff_max_s=2.0)
            await rig.skip_history(settings)
            per_sku = len(KINDS) * (1 + p.good_per_poison)
            base = plan_requests(settings, catalog_products((p.skus + 1) * per_sku, rig.sku_prefix, images=False))
            poison_skus = [f"{rig.sku_prefix}-p{s}" for s in range(p.skus)]
            control = control_sku(rig.sku_prefix, {partition_of(s) for s in poison_skus})
            sequence: list[tuple[str, str, VideoRequested]] = []  # (sku, kind or "good"/"control", request)
            goods = iter(base)
            for sku in poison_skus:
                for n, kind in enumerate(KINDS):
                    sequence.append((sku, kind, poisoned(next(goods).model_copy(update={"sku": sku}), kind, n)))
                    for _ in range(p.good_per_poison):
                        sequence.append((sku, "good", next(goods).model_copy(update={"sku": sku})))
            for _ in range(per_sku):
                sequence.append((control, "control", next(goods).model_copy(update={"sku": control})))
            requests = [r for _, _, r in sequence]
            keys = {r.request_key for r in requests}
            renderers = [rig.renderer(settings, job_seconds=p.job_seconds, fail_marker=FAIL_MARKER,
                                      transient_marker=TRANSIENT_MARKER) for _ in range(p.renderers)]
            await join_then_request(rig, tap, phases, renderers, settings, requests)
            produced_at = time.monotonic()
            complete = await tap.wait_for(lambda: keys <= tap.outcome_keys(), p.timeout_s, alive=rig.check_alive)
            phases.mark("complete")
            lag = await rig.wait_lag_zero(settings.renderer_group, REQUEST_TOPIC_NAMES, 60)
            exit_codes = await rig.stop_when_ready()
            books = account(requests, tap.ready(), tap.failed(), rig.s3.objects(), sku_prefix=rig.sku_prefix)
            phases.mark("stop_and_account")
        finally:
            await tap.stop()

    first_seen: dict[str, tuple[float, object, int]] = {}
    for topic in ("video.ready", "video.failed"):
        for seen in tap.seen[topic]:
            key = getattr(seen.event, "request_key", None)
            if key in keys and key not in first_seen:
                first_seen[key] = (seen.at, seen.event, seen.size)
    wrong, attempts, held = [], {}, {k: [] for k in KINDS}
    latency = {"good": [], "control": []}
    last_at = {}
    for sku, kind, request in sequence:
        at, event, _ = first_seen.get(request.request_key, (None, None, 0))
        if at is None:
            continue
        if kind in KINDS:
            if type(event).__name__ != "VideoFailed" or event.reason.value != EXPECTED_REASON[kind]:
                wrong.append({"kind": kind, "got": type(event).__name__, "reason": getattr(event, "reason", None)})
            attempts.setdefault(kind, []).append(getattr(event, "attempts", 0))
            held[kind].append(round(at - last_at.get(sku, produced_at), 2))
        else:
            if type(event).__name__ != "VideoReady":
                wrong.append({"kind": kind, "got": type(event).__name__, "reason": getattr(event, "reason", None)})
            latency["good" if kind == "good" else "control"].append(at - produced_at)
        last_at[sku] = at
    outcome_bytes = max((s.size for t in ("video.ready", "video.failed") for s in tap.seen[t]
                         if getattr(s.event, "request_key", None) in keys), default=0)
    bounded_attempts = all(a <= p.max_attempts for v in attempts.values() for a in v)
    retried_to_the_end = all(a == p.max_attempts for a in attempts.get("transient_always", []))
    checks = {
        "all_outcomes": complete, "none_lost": books.lost == 0, "expected_outcomes": not wrong,
        "bounded_attempts": bounded_attempts and retried_to_the_end,
        "outcomes_bounded": outcome_bytes <= MAX_OUTCOME_BYTES, "one_video_per_key": books.duplicate_objects == 0,
        "no_crash": not rig.exits, "lag_zero": lag == 0,
        "clean_exit": all(code == 0 for code in exit_codes.values()),
    }

    def summary(values: list[float]) -> dict:
        return {"median_s": round(statistics.median(values), 2), "max_s": round(max(values), 2)} if values else {}

    return result("poison", books, crashes=len(rig.exits), checks=checks, started=phases.started,
                  poison=len(KINDS) * p.skus, good_behind_poison=p.skus * len(KINDS) * p.good_per_poison,
                  max_attempts=p.max_attempts, attempts_by_kind=attempts, partition_held_s_by_kind=held,
                  good_latency=summary(latency["good"]), control_latency=summary(latency["control"]),
                  delay_suffered_s=round(statistics.median(latency["good"]) - statistics.median(latency["control"]), 2)
                  if latency["good"] and latency["control"] else None,
                  largest_outcome_bytes=outcome_bytes, wrong_outcomes=wrong[:10], lag=lag, exit_codes=exit_codes,
                  unexpected_exits=rig.exits, phases=phases.seconds)
