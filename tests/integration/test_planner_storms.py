"""The planner against real Kafka at scale-relevant edges: update storms are coalesced before rendering;
tables on RocksDB survive a restart (the restarted planner still deduplicates what it planned before, reading
nothing again); a planner SIGKILLed in the middle of a load loses nothing; two planners hand partitions over
mid-load (a second one joins, then the first leaves) without losing or changing a plan."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import orjson
import pytest

from schemas.events import VideoPlanned, VideoRequested
from schemas.topics import PRODUCT_CREATED, PRODUCT_UPDATED, REQUEST_TOPICS, VIDEO_PLANNED
from tests.integration.harness import DATA, Service, produce_raw, read_until, run, service_settings

pytestmark = [pytest.mark.kafka]

BASE = orjson.loads(DATA.joinpath("catalog.jsonl").read_bytes().splitlines()[1])
WINDOW_S = 10.0


@pytest.fixture(scope="module")
def planner(kafka_broker, tmp_path_factory):
    """(settings, {"service": the running planner}, work folder); a test may replace the service."""
    work: Path = tmp_path_factory.mktemp("planner-storms")
    settings = service_settings(kafka_broker.bootstrap, work, planner_coalesce_s=WINDOW_S)
    assert settings.planner_store == "rocksdb"
    current = {"service": Service("planner", settings, work)}
    current["service"].wait_for_log("planner ready", timeout_s=120)
    yield settings, current, work
    service = current["service"]
    if service.alive():
        assert service.stop() == 0, service.log()[-3000:]


def version(sku: str, n: int) -> bytes:
    """Version ``n`` of one product: the title changes, so every version is a different video."""
    event = BASE | {"sku": sku, "event_id": f"evt-{sku}-{n}", "title": f"{BASE['title']} v{n}"}
    return orjson.dumps(event)


def requests_of(bootstrap: str, sku: str, settle_s: float, at_least: int = 1) -> list[VideoRequested]:
    def done(events):
        return sum(isinstance(e, VideoRequested) and e.sku == sku for e in events) >= at_least

    run(read_until(bootstrap, [t.name for t in REQUEST_TOPICS], done, timeout_s=120))
    time.sleep(settle_s)  # anything sent after the expected requests would show up meanwhile
    events = run(read_until(bootstrap, [t.name for t in REQUEST_TOPICS], lambda _: False, timeout_s=3))
    return [e for e in events if isinstance(e, VideoRequested) and e.sku == sku]


def test_twenty_updates_in_ten_seconds_render_the_first_and_the_last(planner):
    settings, _, _ = planner
    bootstrap, sku = settings.kafka_bootstrap, f"SKU-S{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    run(produce_raw(bootstrap, PRODUCT_CREATED.name, [version(sku, 1)], [sku.encode()]))
    for n in range(2, 21):
        time.sleep(0.4)
        run(produce_raw(bootstrap, PRODUCT_UPDATED.name, [version(sku, n)], [sku.encode()]))
    assert time.monotonic() - started < WINDOW_S, "the storm took longer than the window: nothing was tested"

    requests = requests_of(bootstrap, sku, settle_s=4, at_least=2)
    assert [r.title for r in requests] == [f"{BASE['title']} v1", f"{BASE['title']} v20"]
    plans = run(read_until(bootstrap, [VIDEO_PLANNED.name], lambda _: False, timeout_s=3))
    mine = [p for p in plans if isinstance(p, VideoPlanned) and p.request.sku == sku]
    assert mine[-1].request.request_key == requests[-1].request_key and mine[-1].dispatched
    assert {p.request.request_key for p in mine} == {r.request_key for r in requests}  # held ones never recorded


def test_restarted_planner_keeps_its_tables_on_rocksdb(planner):
    settings, current, work = planner
    bootstrap, sku = settings.kafka_bootstrap, f"SKU-R{uuid.uuid4().hex[:8]}"
    run(produce_raw(bootstrap, PRODUCT_CREATED.name, [version(sku, 1)], [sku.encode()]))
    [first] = requests_of(bootstrap, sku, settle_s=1)
    assert current["service"].stop() == 0, current["service"].log()[-3000:]
    assert any(settings.planner_data_dir.rglob("CURRENT")), "no RocksDB database under the data folder"
    current["service"] = restarted = Service("planner", settings, work)
    restarted.wait_for_log("planner ready", timeout_s=120)
    assert "recovered: 0 changelog records" in restarted.log()  # the tables were kept: nothing to read again
    marker = f"SKU-M{uuid.uuid4().hex[:8]}"
    run(produce_raw(bootstrap, PRODUCT_UPDATED.name, [version(sku, 1), version(marker, 1)],
                    [sku.encode(), marker.encode()]))
    requests_of(bootstrap, marker, settle_s=1)  # the marker comes after the resent product
    assert [r.request_key for r in requests_of(bootstrap, sku, settle_s=0)] == [first.request_key]


class Load:
    """1,500 distinct products sent at once; what the planners made of them."""

    def __init__(self, bootstrap: str, tag: str) -> None:
        self.bootstrap, self.prefix = bootstrap, f"SKU-{tag}{uuid.uuid4().hex[:6]}"
        self.skus = [f"{self.prefix}-{i:04d}" for i in range(1500)]
        values = [orjson.dumps(BASE | {"sku": s, "event_id": f"evt-{s}", "title": f"{BASE['title']} {s}"})
                  for s in self.skus]
        run(produce_raw(bootstrap, PRODUCT_CREATED.name, values, [s.encode() for s in self.skus]))

    def planned(self, events) -> list[VideoRequested]:
        return [e for e in events if isinstance(e, VideoRequested) and e.sku.startswith(self.prefix)]

    def wait_for(self, done, timeout_s: float) -> list[VideoRequested]:
        events = run(read_until(self.bootstrap, [t.name for t in REQUEST_TOPICS],
                                lambda es: done(self.planned(es)), timeout_s))
        return self.planned(events)

    def all_planned_once(self, timeout_s: float = 240) -> list[VideoRequested]:
        """Every product's requests (waiting for all of them); each product has one request key."""
        requests = self.wait_for(lambda rs: {r.sku for r in rs} >= set(self.skus), timeout_s)
        by_sku: dict[str, set[str]] = {}
        for request in requests:
            by_sku.setdefault(request.sku, set()).add(request.request_key)
        assert set(by_sku) == set(self.skus), f"{len(set(self.skus) - set(by_sku))} products were never planned"
        assert all(len(keys) == 1 for keys in by_sku.values())  # a redelivered product is the same request
        return requests


def test_planner_killed_mid_load_loses_nothing(planner):
    settings, current, work = planner
    load = Load(settings.kafka_bootstrap, "K")
    load.wait_for(lambda requests: len(requests) >= 200, 120)
    current["service"].kill()  # SIGKILL: no clean stop, whatever was in flight
    current["service"] = restarted = Service("planner", settings, work)
    restarted.wait_for_log("planner ready", timeout_s=180)
    load.all_planned_once()


def test_two_planners_hand_partitions_over_mid_load(planner):
    settings, current, work = planner
    load = Load(settings.kafka_bootstrap, "H")
    load.wait_for(lambda requests: len(requests) >= 100, 120)
    first = current["service"]
    second_dir = work / "second-planner"
    second_dir.mkdir()
    second = Service("planner", settings.model_copy(update={"planner_data_dir": second_dir / "data"}),
                     second_dir)  # another pod: its own data folder
    second.wait_for_log("planner ready", timeout_s=120)  # joined: the partitions were split between the two
    assert first.stop() == 0, first.log()[-3000:]  # and handed back when the first one leaves
    current["service"] = second
    duplicates = len(load.all_planned_once()) - len(load.skus)
    assert duplicates == 0, f"{duplicates} requests sent twice: a handover did not commit what it had sent"
