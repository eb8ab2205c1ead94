"""The video index alone (no Kafka, no HTTP): what a listing plays, from real planner output.

Builders here (``plans``, ``planned``, ``ready``, ``failed``) are shared by the other ``test_api_*`` modules.
"""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from api.index import VideoIndex
from consumers.outcomes import failed_event
from consumers.planning import Planner
from experiments.assignment import arm_for_bucket, bucket
from inference.prompt import PromptEngine
from schemas.events import (
    ProductCreated,
    PromoStarted,
    Provenance,
    QualityReport,
    Reason,
    VideoFailed,
    VideoPlanned,
    VideoReady,
    VideoRequested,
)
from skuvid.errors import SkuvidError
from skuvid.settings import Settings
from tests.integration.harness import DATA

CATALOG = DATA / "catalog.jsonl"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def engine() -> PromptEngine:
    return PromptEngine.load()


def product(sku: str, *, hot: bool = False, line: int = 1, **changes) -> ProductCreated:
    data = orjson.loads(CATALOG.read_bytes().splitlines()[line])
    return ProductCreated.model_validate(data | {"sku": sku, "hot": hot, "event_id": f"evt-{sku}"} | changes)


def promo(promo_id: str, skus: list[str], starts: datetime, ends: datetime) -> PromoStarted:
    data = orjson.loads((DATA / "promo.jsonl").read_bytes().splitlines()[0])
    return PromoStarted.model_validate(data | {
        "promo_id": promo_id, "event_id": f"evt-{promo_id}", "skus": skus, "categories": [],
        "starts_at": starts.isoformat(), "ends_at": ends.isoformat(),
    })


def plans(engine: PromptEngine, event: ProductCreated, *, variants: int = 1,
          with_promo: PromoStarted | None = None) -> list[VideoRequested]:
    planner = Planner(engine, Settings(model="tiny", variants_per_product=variants))
    source = with_promo.event_id if with_promo else event.event_id
    plan = planner.plan(event.snapshot(), source_event_id=source, promo=with_promo)
    assert plan.requests, plan.failures
    return plan.requests


def planned(request: VideoRequested, *, dispatched: bool) -> VideoPlanned:
    return VideoPlanned(event_id=f"plan-{request.request_key[:32]}", occurred_at=request.occurred_at,
                        request=request, dispatched=dispatched)


def ready(request: VideoRequested, at: datetime = T0) -> VideoReady:
    base = f"https://cdn.example/videos/{request.sku}/{request.request_key}"
    return VideoReady(
        event_id=f"ready-{request.request_key[:32]}", occurred_at=at, request_key=request.request_key,
        sku=request.sku, variant_id=request.variant_id, video_url=f"{base}.mp4", poster_url=f"{base}.jpg",
        width=416, height=224, num_frames=49, fps=24, duration_s=2.0, bytes=1000, sha256="0" * 64,
        prompt=request.prompt.positive, template_id=request.prompt.template_id,
        quality=QualityReport(passed=True, attempts=1),
        provenance=Provenance(content_producer="skuvid", produce_id=request.request_key, model=request.model,
                              seed=request.params.seed, source_event_id=request.source_event_id, rendered_at=at),
    )


def failed(request: VideoRequested, reason: Reason = Reason.QUALITY_GATE) -> VideoFailed:
    return failed_event(SkuvidError("gate said no", reason=reason), sku=request.sku,
                        source_event_id=request.source_event_id, request_key=request.request_key)


def now_s(dt: datetime = T0) -> float:
    return dt.timestamp()


def test_hot_product_is_pending_until_its_video_is_ready(engine):
    index = VideoIndex()
    [request] = plans(engine, product("SKU-H1", hot=True))
    index.apply_planned(planned(request, dispatched=True), 0, 7)
    miss = index.lookup("SKU-H1", now=now_s())
    assert (miss.status, miss.reason, miss.held) == ("pending", "render_queued", ())
    index.apply_ready(ready(request))
    served = index.lookup("SKU-H1", now=now_s())
    assert served.variant_id == "daily-a" and served.request_key == request.request_key
    assert served.video.video_url.endswith(f"{request.request_key}.mp4")
    assert served.promo_id is None and served.valid_until is None and served.held == ()


def test_lazily_planned_sku_asks_for_its_render_once(engine):
    index = VideoIndex()
    [request] = plans(engine, product("SKU-L1"))
    index.apply_planned(planned(request, dispatched=False), 3, 11)
    first = index.lookup("SKU-L1", now=now_s())
    assert (first.status, first.reason) == ("pending", "render_on_first_view")
    [slot] = first.held
    assert (slot.request_key, slot.partition, slot.offset) == (request.request_key, 3, 11)
    index.mark_dispatched(slot)
    second = index.lookup("SKU-L1", now=now_s())
    assert (second.reason, second.held) == ("render_queued", ())
    index.apply_ondemand(request, 0, 0)  # the sent record, read back from the lane: nothing changes
    assert index.lookup("SKU-L1", now=now_s()).held == ()
    index.apply_ready(ready(request))
    assert index.lookup("SKU-L1", now=now_s()).request_key == request.request_key


def test_another_replica_that_saw_the_sent_request_first_does_not_send_it_again(engine):
    index = VideoIndex()
    [request] = plans(engine, product("SKU-L2"))
    index.apply_ondemand(request, 0, 4)  # another replica's first view, read before the plan
    index.apply_planned(planned(request, dispatched=False), 1, 2)
    miss = index.lookup("SKU-L2", now=now_s())
    assert (miss.reason, miss.held) == ("render_queued", ())


def test_result_does_not_depend_on_the_order_topics_are_read_in(engine):
    hot = product("SKU-O1", hot=True)
    tail = product("SKU-O2", line=2)
    window = promo("P-O", ["SKU-O1", "SKU-UNKNOWN"], T0 - timedelta(hours=1), T0 + timedelta(hours=1))
    [daily] = plans(engine, hot)
    [promo_req] = plans(engine, hot, with_promo=window)
    [tail_req] = plans(engine, tail)
    unknown = failed_event(SkuvidError("no such SKU", reason=Reason.UNKNOWN_SKU), sku="SKU-UNKNOWN",
                           source_event_id=window.event_id, promo_id="P-O")
    events = [
        ("p", planned(daily, dispatched=True)), ("p", planned(promo_req, dispatched=True)),
        ("p", planned(tail_req, dispatched=False)), ("r", ready(daily)), ("r", ready(promo_req)),
        ("f", unknown), ("s", window),
    ]
    answers = set()
    for order in random.Random(7).sample(list(itertools.permutations(events)), 40):
        index = VideoIndex()
        for offset, (_, event) in enumerate(order):
            index.apply("t", event, 0, offset)
        o1, o2 = index.lookup("SKU-O1", now=now_s()), index.lookup("SKU-O2", now=now_s())
        status = index.promo_status("P-O")
        answers.add((o1.variant_id, o1.promo_id, o2.status, o2.reason, status.targeted, status.ready,
                     tuple(status.unknown_skus)))
    assert answers == {("promo-P-O-a", "P-O", "pending", "render_on_first_view", 2, 1, ("SKU-UNKNOWN",))}


def test_promo_variant_inside_its_window_daily_before_and_after(engine):
    index = VideoIndex()
    hot = product("SKU-P1", hot=True)
    starts, ends = T0, T0 + timedelta(hours=2)
    window = promo("P-W", ["SKU-P1"], starts, ends)
    [daily] = plans(engine, hot)
    [promo_req] = plans(engine, hot, with_promo=window)
    for request in (daily, promo_req):
        index.apply_planned(planned(request, dispatched=True), 0, 0)
        index.apply_ready(ready(request))
    assert index.lookup("SKU-P1", now=now_s(starts - timedelta(seconds=1))).variant_id == "daily-a"
    inside = index.lookup("SKU-P1", now=now_s(starts + timedelta(minutes=5)))
    assert (inside.variant_id, inside.promo_id, inside.valid_until) == ("promo-P-W-a", "P-W", ends.timestamp())
    assert inside.request_key == promo_req.request_key
    after = index.lookup("SKU-P1", now=now_s(ends))
    assert (after.variant_id, after.promo_id, after.request_key) == ("daily-a", None, daily.request_key)


def test_promo_variant_not_rendered_yet_falls_back_to_daily(engine):
    index = VideoIndex()
    hot = product("SKU-P2", hot=True)
    window = promo("P-N", ["SKU-P2"], T0 - timedelta(hours=1), T0 + timedelta(hours=1))
    [daily] = plans(engine, hot)
    [promo_req] = plans(engine, hot, with_promo=window)
    index.apply_planned(planned(daily, dispatched=True), 0, 0)
    index.apply_ready(ready(daily))
    index.apply_planned(planned(promo_req, dispatched=True), 0, 1)
    assert index.lookup("SKU-P2", now=now_s()).variant_id == "daily-a"


def test_ab_arm_is_the_documented_bucketing_and_stable_per_user(engine):
    index = VideoIndex(variant_experiment="exp")
    requests = plans(engine, product("SKU-AB", hot=True), variants=2)
    for request in requests:
        index.apply_planned(planned(request, dispatched=True), 0, 0)
        index.apply_ready(ready(request))
    seen = {}
    for n in range(200):
        user = f"u-{n}"
        served = index.lookup("SKU-AB", now=now_s(), user=user)
        expected = arm_for_bucket([("daily-a", 0.5), ("daily-b", 0.5)], bucket("exp:daily", user))
        assert served.variant_id == expected and served.experiment_id == "exp:daily"
        assert index.lookup("SKU-AB", now=now_s(), user=user).variant_id == served.variant_id
        seen[served.variant_id] = seen.get(served.variant_id, 0) + 1
    assert set(seen) == {"daily-a", "daily-b"} and min(seen.values()) > 60
    anonymous = index.lookup("SKU-AB", now=now_s())
    assert (anonymous.variant_id, anonymous.experiment_id) == ("daily-a", None)


def test_arm_without_a_video_yet_gets_another_variant_of_its_group(engine):
    index = VideoIndex(variant_experiment="exp")
    a, b = plans(engine, product("SKU-AB2", hot=True), variants=2)
    for request in (a, b):
        index.apply_planned(planned(request, dispatched=True), 0, 0)
    index.apply_ready(ready(a))
    users_on_b = [u for u in (f"u-{n}" for n in range(50))
                  if arm_for_bucket([("daily-a", 0.5), ("daily-b", 0.5)], bucket("exp:daily", u)) == "daily-b"]
    assert index.lookup("SKU-AB2", now=now_s(), user=users_on_b[0]).variant_id == "daily-a"


def test_newer_plan_serves_the_older_video_while_it_renders_on_this_view(engine):
    index = VideoIndex()
    [old] = plans(engine, product("SKU-S1"))
    [new] = plans(engine, product("SKU-S1", image_url="file:tests/data/images/SKU-1001.png"))
    assert new.request_key != old.request_key
    index.apply_planned(planned(old, dispatched=True), 0, 0)
    index.apply_ready(ready(old))
    index.apply_planned(planned(new, dispatched=False), 0, 1)
    served = index.lookup("SKU-S1", now=now_s())
    assert served.request_key == old.request_key
    assert [s.request_key for s in served.held] == [new.request_key]


def test_refusals_unknown_and_recovery(engine):
    index = VideoIndex()
    assert index.lookup("SKU-NOPE", now=now_s()).status == "unknown"
    unsafe = failed_event(SkuvidError("unsafe title", reason=Reason.UNSAFE_CONTENT), sku="SKU-R1",
                          source_event_id="evt-SKU-R1")
    index.apply_failed(unsafe)
    miss = index.lookup("SKU-R1", now=now_s())
    assert (miss.status, miss.reason) == ("refused", "unsafe_content")
    [request] = plans(engine, product("SKU-R1"))  # fixed later: planned after the refusal
    index.apply_planned(planned(request.model_copy(update={"occurred_at": unsafe.occurred_at + timedelta(seconds=1)}),
                                dispatched=True), 0, 0)
    assert index.lookup("SKU-R1", now=now_s()).status == "pending"
    index.apply_failed(failed(request))
    miss = index.lookup("SKU-R1", now=now_s())
    assert (miss.status, miss.reason) == ("refused", "quality_gate")


def test_promo_status_counts_and_eta(engine):
    index = VideoIndex()
    starts = T0 - timedelta(minutes=1)
    window = promo("P-S", ["SKU-S2", "SKU-S3", "SKU-GONE"], starts, T0 + timedelta(hours=1))
    index.apply_promo(window)
    reqs = [plans(engine, product(sku, hot=True), with_promo=window)[0] for sku in ("SKU-S2", "SKU-S3")]
    for request in reqs:
        index.apply_planned(planned(request, dispatched=True), 0, 0)
    index.apply_failed(failed_event(SkuvidError("unknown", reason=Reason.UNKNOWN_SKU), sku="SKU-GONE",
                                    source_event_id=window.event_id, promo_id="P-S"))
    status = index.promo_status("P-S")
    assert (status.targeted, status.planned, status.ready, status.unknown_skus) == (3, 2, 0, ["SKU-GONE"])
    assert status.failed == {"unknown_sku": 1}
    assert status.eta_s is None  # no throughput measured yet
    [earlier] = plans(engine, product("SKU-S4", hot=True))  # planned before the promo: ahead of it in the lane
    earlier = earlier.model_copy(update={"occurred_at": reqs[0].occurred_at - timedelta(seconds=1)})
    index.apply_planned(planned(earlier, dispatched=True), 0, 0)
    for n in range(5):  # five videos in 40 s: 0.1 video/s
        other = plans(engine, product(f"SKU-T{n}", hot=True))[0]
        index.apply_ready(ready(other, at=T0 + timedelta(seconds=10 * n)))
    status = index.promo_status("P-S")
    ahead = sum(1 for t in index.backlog.values() if t <= max(r.occurred_at.timestamp() for r in reqs))
    assert ahead == 3 and status.eta_s == pytest.approx(30.0)
    index.apply_ready(ready(reqs[0]))
    index.apply_failed(failed(reqs[1], Reason.RENDER_ERROR))
    status = index.promo_status("P-S")
    assert (status.ready, status.failed, status.eta_s) == (1, {"unknown_sku": 1, "render_error": 1}, 0.0)
    assert index.promo_status("P-NONE") is None


def test_ondemand_status(engine):
    index = VideoIndex()
    [request] = plans(engine, product("SKU-D1"))
    vid = "0123456789abcdef01234567"
    mine = request.model_copy(update={"variant_id": f"ondemand-{vid}"})
    index.apply_ondemand(mine, 2, 9)
    assert index.video_status(vid).status == "queued"
    index.apply_ondemand(mine, 2, 10)  # a duplicate send keeps the first position
    assert index.video_status(vid).entry.offset == 9
    assert index.lookup("SKU-D1", now=now_s()).status == "unknown"  # on-demand renders are not listing videos
    index.apply_ready(ready(mine))
    assert index.video_status(vid).status == "ready"
    assert index.lookup("SKU-D1", now=now_s()).status == "unknown"
    assert index.video_status("f" * 24) is None
