"""The planner's tables without a broker: writes kept in layers until their changelog is acknowledged, reads
through the layers, the store written in seal order with the changelog offset, on RocksDB and in memory."""

from __future__ import annotations

import pytest

from consumers.planner_tables import OFFSET_KEY, PlannerTables, RocksStore, encode
from skuvid.settings import Settings

GROUP = "planner-t"
CATALOG, PLANNED = f"{GROUP}-catalog-changelog", f"{GROUP}-planned-changelog"


@pytest.fixture(params=["memory", "rocksdb"])
def tables(request, tmp_path):
    settings = Settings(planner_group=GROUP, planner_store=request.param, planner_data_dir=tmp_path)
    t = PlannerTables(settings)
    t.open([0, 1])
    yield t
    t.close()


def test_a_write_is_read_back_at_once_and_its_layer_sends_the_newest_value_of_each_key(tables):
    t = tables
    catalog, planned = t.tables["catalog"], t.tables["planned"]
    t.partition = 1
    catalog["SKU-1"] = {"sku": "SKU-1", "title": "降噪"}
    assert catalog.get("SKU-1") == {"sku": "SKU-1", "title": "降噪"}
    del catalog["SKU-1"]
    assert catalog.get("SKU-1", "gone") == "gone"
    catalog["SKU-2"] = {"sku": "SKU-2"}
    planned["SKU-2|daily-a"] = "k1"
    planned["SKU-2|daily-a"] = "k2"
    t.partition = 0
    assert catalog.get("SKU-2") is None  # another partition's store
    assert sorted(t.changelog(t.seal()), key=repr) == sorted([
        (CATALOG, 1, encode("SKU-1"), None), (CATALOG, 1, encode("SKU-2"), encode({"sku": "SKU-2"})),
        (PLANNED, 1, encode("SKU-2|daily-a"), encode("k2")),
    ], key=repr)


def two_layers(t: PlannerTables):
    """Partition 0 of ``planned``: layer one writes a|daily=k1, layer two a|daily=k2 and b|daily=k3."""
    planned = t.tables["planned"]
    t.partition = 0
    planned["a|daily"] = "k1"
    first = t.seal()
    planned["a|daily"] = "k2"
    planned["b|daily"] = "k3"
    return planned, first, t.seal()


def test_the_store_gets_a_layer_only_with_its_acknowledged_offset_and_in_seal_order(tables):
    t = tables
    planned, first, second = two_layers(t)
    store = t.store("planned", 0)
    assert store.get(encode("a|daily")) is None and store.offset() is None
    assert planned.get("a|daily") == "k2"  # the newest layer wins
    with pytest.raises(RuntimeError, match="order"):
        t.write(second, {(PLANNED, 0): 2})
    with pytest.raises(RuntimeError, match="not acknowledged"):
        t.write(first, {})
    assert store.get(encode("a|daily")) is None and store.offset() is None


def test_written_layers_reach_the_store_with_their_offsets(tables):
    t = tables
    planned, first, second = two_layers(t)
    t.write(first, {(PLANNED, 0): 10, ("video.requested", 3): 99})
    store = t.store("planned", 0)
    assert (store.get(encode("a|daily")), store.offset()) == (encode("k1"), 10)
    assert planned.get("a|daily") == "k2"
    t.write(second, {(PLANNED, 0): 11})
    assert (store.get(encode("a|daily")), store.offset()) == (encode("k2"), 11)


def test_a_partition_scan_sees_writes_not_yet_stored(tables):
    t = tables
    catalog = t.tables["catalog"]
    t.partition = 1
    catalog["old"] = {"v": 1}
    catalog["changed"] = {"v": 1}
    t.write(t.seal(), {(CATALOG, 1): 1})
    catalog["changed"] = {"v": 2}
    catalog["new"] = {"v": 3}
    del catalog["old"]
    assert dict(catalog.partition_items(1)) == {"changed": {"v": 2}, "new": {"v": 3}}


def test_a_partition_scan_goes_in_key_order_and_resumes_after_a_key(tables):
    """Stored and pending entries interleave in key order, so a scan in parts sees every entry once."""
    t = tables
    catalog = t.tables["catalog"]
    t.partition = 1
    for sku in ("SKU-3", "SKU-1", "SKU-5"):
        catalog[sku] = {"sku": sku}
    t.write(t.seal(), {(CATALOG, 1): 2})
    for sku in ("SKU-4", "SKU-0", "SKU-2"):
        catalog[sku] = {"sku": sku}
    del catalog["SKU-5"]
    assert [k for k, _ in catalog.partition_items(1)] == ["SKU-0", "SKU-1", "SKU-2", "SKU-3", "SKU-4"]
    assert [k for k, _ in catalog.partition_items(1, after="SKU-2")] == ["SKU-3", "SKU-4"]
    assert [k for k, _ in catalog.partition_items(1, after="SKU-25")] == ["SKU-3", "SKU-4"]
    assert list(catalog.partition_items(1, after="SKU-4")) == []


def test_unassigned_partitions_are_refused(tables):
    t = tables
    t.partition = 5
    with pytest.raises(KeyError, match="not assigned"):
        t.tables["catalog"]["SKU-9"] = {}
    t.partition = None
    with pytest.raises(RuntimeError, match="outside"):
        t.tables["catalog"].get("SKU-9")


def test_rocksdb_keeps_data_and_offset_across_reopening(tmp_path):
    store = RocksStore(tmp_path / "catalog-0.db", cache_mb=1)
    store.apply([(b'"a"', b"1"), (b'"b"', b"2"), (b'"a"', None)], offset=41)
    store.close()
    again = RocksStore(tmp_path / "catalog-0.db", cache_mb=1)
    assert (list(again.items()), again.offset(), again.get(OFFSET_KEY)) == ([(b'"b"', b"2")], 41, b"41")
    again.close()


async def test_a_failed_recovery_stops_the_planner_before_it_handles_a_record():
    """aiokafka only logs what a rebalance listener raises: the planner must not go on without its tables."""
    from aiokafka import TopicPartition
    from aiokafka.errors import KafkaConnectionError

    from consumers.planner_service import PlannerService
    from inference.prompt import PromptEngine
    from skuvid.metrics import Metrics

    service = PlannerService(Settings(model="tiny", planner_store="memory"), PromptEngine.load(), Metrics())
    service._wire()

    class Reader:
        async def end_offsets(self, tps):
            raise KafkaConnectionError("the broker went away")

    service._reader = Reader()
    with pytest.raises(KafkaConnectionError):
        await service.take({TopicPartition("product.created", 0)})
    assert service._stopping.is_set() and not service.readiness.is_set("tables_recovered")
    with pytest.raises(KafkaConnectionError):
        await service._handle({TopicPartition("product.created", 0): []})
