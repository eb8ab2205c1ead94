"""The planner's scale machinery without a broker: update-storm coalescing over dict tables with a fake clock,
the one-serialisation record encoder, the batching outbox (partitions, order, delivery hooks), the catalog
partition scan, the table bytes faust would write, and the fast paths that must give the same results."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from consumers.planner import (
    CATALOG_PARTITIONS,
    CoalesceTick,
    Outbox,
    acknowledged,
    PlannerFlow,
    PromoTarget,
    RecordEncoder,
    catalog_partition,
    owns,
    planned_event,
)
from consumers.planner_tables import encode
from consumers.planning import Planner
from inference.params import ParamsError, plan_params
from inference.prompt.engine import _canonical_json
from schemas.codec import encode_value
from schemas.events import VideoPlanned, VideoRequested
from schemas.topics import REQUEST_TOPICS, VIDEO_PLANNED, Topic
from skuvid.metrics import Metrics
from skuvid.settings import Settings
from tests.unit.test_api_index import T0, engine, product, promo  # noqa: F401 - fixture

LANES = {t.name for t in REQUEST_TOPICS}
TICKS = Topic("planner-coalesce", CoalesceTick, CATALOG_PARTITIONS, "test ticks")


def run(coro):
    return asyncio.run(coro)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def coalescing_flow(engine, window_s: float = 10.0):  # noqa: F811
    sent: list[tuple[str, object, bytes | None, int | None]] = []

    async def send(topic, event, key=None, partition=None):
        sent.append((topic.name, event, key, partition))

    clock = Clock()
    flow = PlannerFlow(Planner(engine, Settings(model="tiny")), engine, {}, {}, send, Metrics(), render_policy="eager",
                       held={}, coalesce_s=window_s, tick_topic=TICKS, clock=clock)
    return flow, sent, clock


def version(n: int, sku: str = "SKU-ST"):
    return product(sku, title=f"降噪蓝牙耳机 v{n}", event_id=f"evt-{sku}-{n}")


def requests(sent) -> list[VideoRequested]:
    return [e for t, e, _, _ in sent if t in LANES]


def test_a_storm_sends_the_first_version_at_once_and_the_last_when_the_window_closes(engine):  # noqa: F811
    flow, sent, clock = coalescing_flow(engine)
    run(flow.on_product(version(1), partition=4))
    for n in range(2, 21):
        clock.now += 0.45
        run(flow.on_product(version(n), partition=4))
    assert [r.title for r in requests(sent)] == ["降噪蓝牙耳机 v1"]
    ticks = [(e, k, p) for t, e, k, p in sent if t == TICKS.name]
    assert len(ticks) == 19 and all(k == b"SKU-ST" and p == 4 for _, k, p in ticks)  # one per held version
    assert ticks[0][0].due == pytest.approx(1_000_000.0 + 0.45 + 10.0)
    assert set(flow.held) == {"SKU-ST|daily-a"}
    for tick, _, _ in ticks:  # as the tick agent does: each once its due time has come
        clock.now = tick.due
        run(flow.on_tick(tick))
    assert [r.title for r in requests(sent)] == ["降噪蓝牙耳机 v1", "降噪蓝牙耳机 v20"]
    assert flow.held == {} and flow.planned["SKU-ST|daily-a"] == requests(sent)[-1].request_key
    plans = [e for t, e, _, _ in sent if t == VIDEO_PLANNED.name]
    assert [p.request.title for p in plans] == ["降噪蓝牙耳机 v1", "降噪蓝牙耳机 v20"]
    assert all(p.dispatched for p in plans)


def test_a_tick_inside_the_window_of_the_last_send_leaves_the_newest_plan_to_a_later_tick(engine):  # noqa: F811
    flow, sent, clock = coalescing_flow(engine)
    run(flow.on_product(version(1)))
    clock.now += 1
    run(flow.on_product(version(2)))  # held, tick due +11
    first_tick = [e for t, e, *_ in sent if t == TICKS.name][0]
    clock.now = first_tick.due
    run(flow.on_tick(first_tick))  # sends v2
    clock.now += 0.5
    run(flow.on_product(version(3)))  # held again, its own tick
    early = CoalesceTick(slot="SKU-ST|daily-a", due=clock.now)  # e.g. a second tick of the first window
    run(flow.on_tick(early))
    assert [r.title for r in requests(sent)] == ["降噪蓝牙耳机 v1", "降噪蓝牙耳机 v2"]
    last_tick = [e for t, e, *_ in sent if t == TICKS.name][-1]
    clock.now = last_tick.due
    run(flow.on_tick(last_tick))
    assert [r.title for r in requests(sent)][-1] == "降噪蓝牙耳机 v3"


def test_a_plan_sent_at_once_drops_an_older_held_one(engine):  # noqa: F811
    flow, sent, clock = coalescing_flow(engine)
    flow.held["SKU-ST|daily-a"] = {"stale": True}  # e.g. left by a crash: nothing sent recently
    run(flow.on_product(version(7)))
    assert flow.held == {} and [r.title for r in requests(sent)] == ["降噪蓝牙耳机 v7"]


def test_after_the_window_a_new_version_goes_at_once(engine):  # noqa: F811
    flow, sent, clock = coalescing_flow(engine)
    run(flow.on_product(version(1)))
    clock.now += 10.0
    run(flow.on_product(version(2)))
    assert [r.title for r in requests(sent)] == ["降噪蓝牙耳机 v1", "降噪蓝牙耳机 v2"]
    assert not [t for t, *_ in sent if t == TICKS.name]


def test_a_storm_that_ends_where_it_began_sends_nothing_more(engine):  # noqa: F811
    flow, sent, clock = coalescing_flow(engine)
    run(flow.on_product(version(1)))
    clock.now += 1
    run(flow.on_product(version(2)))  # held, tick sent
    clock.now += 1
    run(flow.on_product(version(1)))  # back to what was sent: nothing held any more
    assert flow.held == {}
    [tick] = [e for t, e, *_ in sent if t == TICKS.name]
    run(flow.on_tick(tick))
    assert [r.title for r in requests(sent)] == ["降噪蓝牙耳机 v1"]


def test_slots_are_coalesced_one_by_one(engine):  # noqa: F811
    flow, sent, clock = coalescing_flow(engine)
    run(flow.on_product(version(1, "SKU-A")))
    run(flow.on_product(version(1, "SKU-B")))
    window = promo("P-S", ["SKU-A"], T0, T0 + timedelta(hours=1))
    run(flow.on_promo_target(PromoTarget(promo=window, sku="SKU-A")))
    assert sorted(r.variant_id + r.sku for r in requests(sent)) == ["daily-aSKU-A", "daily-aSKU-B", "promo-P-S-aSKU-A"]


def test_coalescing_needs_a_tick_topic(engine):  # noqa: F811
    with pytest.raises(ValueError, match="tick_topic"):
        PlannerFlow(Planner(engine, Settings(model="tiny")), engine, {}, {}, None, Metrics(), coalesce_s=5.0)


def test_planned_record_is_built_around_the_request_json(engine):  # noqa: F811
    request = Planner(engine, Settings(model="tiny")).plan(version(1).snapshot(), source_event_id="e").requests[0]
    encode = RecordEncoder()
    assert encode(request) == encode_value(request)
    for dispatched in (True, False):
        planned = planned_event(request, dispatched=dispatched)
        assert encode(planned) == encode_value(planned)
        assert VideoPlanned.model_validate_json(encode(planned)) == planned
    other = Planner(engine, Settings(model="tiny")).plan(version(2).snapshot(), source_event_id="e").requests[0]
    assert encode(planned_event(other, dispatched=True)) == encode_value(planned_event(other, dispatched=True))
    window = promo("P-ENC", [], T0, T0 + timedelta(days=1))
    with_overlay = Planner(engine, Settings(model="tiny")).plan(version(3).snapshot(), source_event_id="e",
                                                                promo=window).requests[0]
    assert with_overlay.prompt.overlays and encode(with_overlay) == encode_value(with_overlay)
    assert encode(planned_event(with_overlay, dispatched=True)) == encode_value(planned_event(with_overlay,
                                                                                              dispatched=True))


class FakeBatch:
    def __init__(self, capacity: int) -> None:
        self.records: list[tuple] = []
        self.capacity = capacity

    def append(self, *, timestamp, key, value, headers):
        if len(self.records) >= self.capacity:
            return None
        self.records.append((key, value, headers))
        return object()

    def record_count(self) -> int:
        return len(self.records)


class FakeProducer:
    def __init__(self, capacity: int = 3, fail: set[str] = frozenset()) -> None:
        self.capacity = capacity
        self.fail = fail
        self.sent: list[tuple[str, int, list]] = []
        self.next_offset: dict[tuple[str, int], int] = {}

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.capacity)

    async def send_batch(self, batch, topic, *, partition):
        self.sent.append((topic, partition, batch.records))
        future = asyncio.get_running_loop().create_future()
        if topic in self.fail:
            future.set_exception(RuntimeError("broker said no"))
        else:
            base = self.next_offset.get((topic, partition), 0)
            self.next_offset[(topic, partition)] = base + len(batch.records)
            future.set_result(type("Meta", (), {"offset": base})())
        return future


def test_outbox_partitions_like_the_default_partitioner_and_keeps_order():
    producer, failed = FakeProducer(), []
    box = Outbox(lambda: producer, {"t": 6, "u": 3}, lambda *a: failed.append(a))
    partitioner = DefaultPartitioner()
    for key in (b"SKU-1", b"SKU-2", b"B0a1b2c-0000001|daily-a", b"\xe4\xb8\xad"):
        assert box.partition_for("t", key) == partitioner(key, list(range(6)), list(range(6)))

    async def go():
        for i in range(8):  # one partition, batches of three: two full ones handed over on the way
            await box.add("t", b"k", b"v%d" % i, [], partition=2)
        box.append("u", None, b"x", [])
        await box.flush()
        sent = box.take_sent()
        return [(b.topic, b.partition, b.count) for b in sent], await acknowledged(sent)

    batches, last = run(go())
    to_t = [records for topic, _, records in producer.sent if topic == "t"]
    assert [v for records in to_t for _, v, _ in records] == [b"v%d" % i for i in range(8)]
    assert [len(r) for r in to_t] == [3, 3, 2]
    assert [b for b in batches if b[0] == "t"] == [("t", 2, 3), ("t", 2, 3), ("t", 2, 2)]
    assert last["t", 2] == 7 and not failed and box.take_sent() == []


def test_outbox_reports_an_undelivered_batch():
    producer, failed = FakeProducer(fail={"t"}), []
    box = Outbox(lambda: producer, {"t": 6}, lambda topic, partition, exc: failed.append((topic, partition)))

    async def go():
        box.append("t", b"k", b"v", [], partition=1)
        await box.flush()
        with pytest.raises(RuntimeError, match="broker said no"):
            await acknowledged(box.take_sent())

    run(go())
    assert failed == [("t", 1)]


SCANS = Topic("planner-promo-fanout", PromoTarget, CATALOG_PARTITIONS, "test scan parts")


def test_a_category_scan_runs_in_parts_that_resume_after_the_last_sku(engine):  # noqa: F811
    """Every part reads at most ``scan_part_rows`` catalog rows (matching or not) and sends the rest of the scan to
    its fan-out partition; following the parts plans every product of the category in the partition once."""
    sent: list[tuple[str, object, bytes | None, int | None]] = []

    async def send(topic, event, key=None, partition=None):
        sent.append((topic.name, event, key, partition))

    catalog = {}
    for i in range(60):
        p = product(f"SKU-{i:03d}", category="kitchen" if i % 3 else "3c")
        catalog[p.sku] = p.snapshot().model_dump(mode="json")
    flow = PlannerFlow(Planner(engine, Settings(model="tiny")), engine, catalog, {}, send, Metrics(),
                       render_policy="eager", fanout_topic=SCANS, scan_part_rows=4)
    window = promo("P-SCAN", [], T0, T0 + timedelta(days=1)).model_copy(update={"categories": ["kitchen"]})
    partition = 2
    rows = [sku for sku, _ in catalog_partition(catalog, partition)]
    target, parts = PromoTarget(promo=window, scan_partition=partition), 0
    while target is not None:
        sent.clear()
        run(flow.on_promo_target(target, partition=partition))
        parts += 1
        rest = [(event, p) for name, event, _, p in sent if name == SCANS.name]
        requested = [r.sku for r in requests(sent)]
        done = rows[:4] if target.after is None else [s for s in rows if s > target.after][:4]
        assert requested == [s for s in done if catalog[s]["category"] == "kitchen"]
        assert len(rest) <= 1
        target = None
        if rest:
            (target, to), = rest
            assert (to, target.scan_partition, target.after, target.promo) == (partition, partition, done[-1], window)
    assert parts == -(-len(rows) // 4) and len(rows) > 4


def test_catalog_partition_of_a_plain_mapping_filters_by_owner():
    catalog = {f"SKU-{i}": {"sku": f"SKU-{i}"} for i in range(60)}
    seen = [sku for p in range(CATALOG_PARTITIONS) for sku, _ in catalog_partition(catalog, p)]
    assert sorted(seen) == sorted(catalog)
    assert all(owns(sku, p) for p in range(CATALOG_PARTITIONS) for sku, _ in catalog_partition(catalog, p))


def test_table_bytes_are_what_fausts_json_codec_wrote():
    """Changelogs written by the faust planner stay readable (and compact with this planner's records)."""
    from faust.utils import json as faust_json

    for value in ("SKU-1", "SKU-1|promo-P-α-a", {"sku": "x", "title": "降噪\u2028\x01", "n": 1.5, "l": [1, None]}):
        assert encode(value) == faust_json.dumps(value)


def test_params_checked_once_are_the_params_of_each_request():
    settings = Settings(model="tiny")
    planner = Planner.__new__(Planner)
    Planner.__init__(planner, None, settings)
    for key in ("a", "tiny|abc|file:x.png", "x" * 300):
        assert planner.params_for(key) == plan_params(settings, key=key)
    bad = Planner(None, Settings(model="tiny", steps=1).model_copy(update={"steps": 500}))
    with pytest.raises(ParamsError, match="steps"):
        bad.params_for("a")


@pytest.mark.parametrize("overlays", [[], [{"end_s": 5.0, "start_s": 0.0, "text": "限时\n5折", "promo_id": None}],
                                      [{"end_s": 1e-05, "start_s": 0.0, "text": "x"}],
                                      [{"end_s": 2.0, "start_s": 0.0, "text": "lone \ud800 surrogate"}]])
def test_canonical_prompt_json_is_the_json_modules(overlays):
    doc = {"positive": "a, b. 「c」\x7f", "negative": "n", "language": "zh-CN", "template_id": "3c",
           "template_version": 2, "overlays": overlays}
    expected = json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    assert _canonical_json(doc) == expected.encode("utf-8", "surrogatepass")


@given(st.binary(max_size=80))
def test_murmur2_is_kafkas(key):
    from aiokafka.partitioner import murmur2 as aiokafka_murmur2

    from skuvid.partitioning import murmur2

    assert murmur2(key) == aiokafka_murmur2(key)
