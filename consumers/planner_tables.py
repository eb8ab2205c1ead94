"""The planner's tables: one key/value store per (table, catalog partition), each rebuilt from its changelog.

A table (``catalog``, ``planned``, ``held``) is a compacted changelog topic ``<group>-<table>-changelog``,
partitioned like the catalog, plus a local store per partition this planner owns: RocksDB under the data
folder (``Settings.planner_store``; a restart reads only the changelog written since) or a dict (tests).
Keys and values are JSON bytes (orjson, as faust-streaming's ``json`` codec wrote them), and each RocksDB
database keeps the offset of the last changelog record it holds under faust-streaming's offset key, in its
layout (``v1/tables/<table>-<partition>.db``): data folders and changelogs of the faust planner stay valid.

``PlannerTables.partition`` is the catalog partition the planner is handling; a ``Table`` reads and writes
that partition. Writes are kept in memory in layers (reads see them): a batch's layer is sealed when its outputs
are handed to the producer, its changelog records (the newest value of each key written) are sent only once
those outputs are acknowledged, and once the changelog records are acknowledged too, ``write()`` puts the layer
into the store with the offset of its changelog's last record, in one atomic RocksDB write. So a changelog
never says "planned" for a request the broker does not have, a store never holds what its changelog lacks,
and whatever stops the process (SIGKILL, OOM, an undelivered output) the database on disk is a prefix of the
changelog with its own offset: a restart reads only the changelog after it. ``recover`` brings newly
assigned partitions' stores up to their changelogs' end, reading them with a plain aiokafka consumer (no
group), one atomic write per fetched batch.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from skuvid.settings import Settings

log = logging.getLogger(__name__)

TABLES = ("catalog", "planned", "held")
OFFSET_KEY = b"__faust\0offset__"  # faust-streaming's key for a database's changelog offset (not valid JSON)
RECOVERY_FETCH_RECORDS = 10_000
RECOVERY_IDLE_FETCHES = 10  # empty fetches in a row (a second each) before a changelog counts as read


def encode(value: Any) -> bytes:
    """A table key or value as stored and sent on the changelog (faust's ``json`` codec with orjson)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z)


def changelog_topic(group: str, table: str) -> str:
    return f"{group}-{table}-changelog"


class PartitionStore(Protocol):
    """One table partition's local bytes, and the offset of the last changelog record applied."""

    def get(self, key: bytes) -> bytes | None: ...
    def items(self, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]: ...
    def apply(self, records: Iterable[tuple[bytes, bytes | None]], offset: int) -> None: ...
    def offset(self) -> int | None: ...
    def close(self) -> None: ...


class MemoryStore:
    """A dict: rebuilt from the whole changelog whenever the process starts."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._offset: int | None = None

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def items(self, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """In key order (as RocksDB's), from the first key above ``after``."""
        return iter([(k, v) for k, v in sorted(self._data.items()) if after is None or k > after])

    def apply(self, records: Iterable[tuple[bytes, bytes | None]], offset: int) -> None:
        for key, value in records:
            if value is None:
                self._data.pop(key, None)
            else:
                self._data[key] = value
        self._offset = offset

    def offset(self) -> int | None:
        return self._offset

    def close(self) -> None:
        pass


class RocksStore:
    """A RocksDB database (``rocksdict``, raw bytes) with its changelog offset under ``OFFSET_KEY``."""

    def __init__(self, path: Path, cache_mb: int) -> None:
        import rocksdict  # noqa: PLC0415 - only the planner on RocksDB needs it

        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_size(16 << 20)
        options.set_max_write_buffer_number(2)
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(rocksdict.Cache(cache_mb << 20))
        table.set_bloom_filter(3, True)
        options.set_block_based_table_factory(table)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._rocksdict = rocksdict
        self._db = rocksdict.Rdict(str(path), options=options)

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def items(self, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Every entry but the offset in key order, from the first key above ``after``, through one consistent
        iterator."""
        for key, value in self._db.items(from_key=after):
            if key != OFFSET_KEY and value is not None and key != after:
                yield key, value

    def apply(self, records: Iterable[tuple[bytes, bytes | None]], offset: int) -> None:
        batch = self._rocksdict.WriteBatch(raw_mode=True)
        for key, value in records:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        batch.put(OFFSET_KEY, str(offset).encode())
        self._db.write(batch)

    def offset(self) -> int | None:
        raw = self._db.get(OFFSET_KEY)
        return None if raw is None else int(raw)

    def close(self) -> None:
        self._db.close()


Layer = dict[tuple[str, int], dict[bytes, bytes | None]]  # (table, partition) -> key -> value (None: deleted)


class PlannerTables:
    """The planner's three tables over the partitions it owns; ``partition`` is the one being handled.

    Writes go into the open layer; ``seal()`` closes it when the batch's outputs have been handed to the
    producer; ``changelog(layer)`` is what to send for it once they are acknowledged, and ``write(layer,
    offsets)`` puts it into the stores once that is acknowledged. Reads see the open layer, then the sealed ones
    (newest first), then the store: a batch reads what the batches before it wrote while their
    acknowledgements are still on the way."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.partition: int | None = None
        self._stores: dict[tuple[str, int], PartitionStore] = {}
        self._open: Layer = {}
        self._sealed: list[Layer] = []  # oldest first
        self.tables = {name: Table(self, name, changelog_topic(settings.planner_group, name)) for name in TABLES}
        self._table_of = {table.topic: name for name, table in self.tables.items()}

    @property
    def folder(self) -> Path:
        return planner_datadir(self.settings) / "v1" / "tables"

    def store(self, table: str, partition: int) -> PartitionStore:
        try:
            return self._stores[(table, partition)]
        except KeyError:
            raise KeyError(f"table {table} partition {partition} is not assigned to this planner") from None

    def owned(self) -> set[int]:
        return {partition for _, partition in self._stores}

    def open(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            for table in TABLES:
                if (table, partition) not in self._stores:
                    self._stores[(table, partition)] = self._open_store(table, partition)

    def close(self, partitions: Iterable[int] | None = None) -> None:
        """Close the stores of ``partitions`` (all when None); their data stays on disk, writes not yet put
        into them are dropped (their next owner reads the changelog)."""
        wanted = set(self.owned() if partitions is None else partitions)
        for key in [k for k in self._stores if k[1] in wanted]:
            self._stores.pop(key).close()
            for layer in (self._open, *self._sealed):
                layer.pop(key, None)

    def _open_store(self, table: str, partition: int) -> PartitionStore:
        if self.settings.planner_store == "memory":
            return MemoryStore()
        return RocksStore(self.folder / f"{table}-{partition}.db", self.settings.planner_rocksdb_cache_mb)

    def seal(self) -> Layer:
        """Close the open layer (its batch's outputs were handed to the producer) and open a new one."""
        layer, self._open = self._open, {}
        self._sealed.append(layer)
        return layer

    def write(self, layer: Layer, acknowledged: dict[tuple[str, int], int]) -> None:
        """Put the oldest sealed ``layer`` into the stores, each store with the offset of its changelog's last
        acknowledged record (``acknowledged``: (topic, partition) -> offset, as ``acknowledged`` gives it), in
        one atomic write per store."""
        if not self._sealed or self._sealed[0] is not layer:
            raise RuntimeError("table layers must be written in the order they were sealed")
        self._sealed.pop(0)
        offsets = {(self._table_of[topic], partition): offset for (topic, partition), offset in acknowledged.items()
                   if topic in self._table_of}
        for key in set(layer) | set(offsets):
            store = self._stores.get(key)
            if store is None:
                continue  # closed: revoked, its next owner reads the changelog
            if key not in offsets:
                raise RuntimeError(f"table {key[0]} partition {key[1]}: writes whose changelog was not acknowledged")
            store.apply(layer.get(key, {}).items(), offsets[key])

    def _lookup(self, table: str, partition: int, key: bytes) -> bytes | None:
        slot = (table, partition)
        for layer in (self._open, *reversed(self._sealed)):
            written = layer.get(slot)
            if written is not None and key in written:
                return written[key]
        return self.store(table, partition).get(key)

    def _put(self, table: str, partition: int, key: bytes, value: bytes | None) -> None:
        self.store(table, partition)  # assigned, or KeyError
        # Copies: orjson's bytes keep their whole output buffer (4 KiB for a 70-byte request key); a promo
        # over 100,000 products holds as many writes until their batch is acknowledged.
        value = None if value is None else bytes(memoryview(value))
        self._open.setdefault((table, partition), {})[bytes(memoryview(key))] = value

    def changelog(self, layer: Layer) -> list[tuple[str, int, bytes, bytes | None]]:
        """(topic, partition, key, value) of the changelog records of ``layer``: the newest value of each key it
        wrote (a delete is a tombstone), partition by partition."""
        return [(self.tables[table].topic, partition, key, value)
                for (table, partition), written in layer.items() for key, value in written.items()]

    def _written(self, table: str, partition: int) -> dict[bytes, bytes | None]:
        """Every write of one table partition not yet in its store, the newest of each key."""
        merged: dict[bytes, bytes | None] = {}
        for layer in (*self._sealed, self._open):
            merged.update(layer.get((table, partition), {}))
        return merged

    async def recover(self, reader: AIOKafkaConsumer, partitions: Iterable[int]) -> int:
        """Apply each changelog partition of ``partitions`` from after its store's offset to its end; returns
        the number of records applied. ``reader`` is a started consumer without a group."""
        stores = {TopicPartition(changelog_topic(self.settings.planner_group, table), partition): (table, partition)
                  for partition in partitions for table in TABLES}
        if not stores:
            return 0
        ends = await reader.end_offsets(list(stores))
        todo: dict[TopicPartition, int] = {}
        for tp, end in ends.items():
            start = self.store(*stores[tp]).offset()
            start = 0 if start is None else start + 1
            if start < end:
                todo[tp] = start
        applied = 0
        reader.assign(list(todo))
        for tp, start in todo.items():
            reader.seek(tp, start)
        idle = dict.fromkeys(todo, 0)
        while todo:
            fetched = await reader.getmany(*todo, timeout_ms=1000, max_records=RECOVERY_FETCH_RECORDS)
            for tp, records in fetched.items():
                if records:
                    self.store(*stores[tp]).apply(((r.key, r.value) for r in records), records[-1].offset)
                    applied += len(records)
                    idle[tp] = 0
            for tp in list(todo):
                position = await reader.position(tp)
                idle[tp] += not fetched.get(tp)
                if position >= ends[tp]:
                    del todo[tp]
                elif idle[tp] >= RECOVERY_IDLE_FETCHES:  # a broker whose end offset no record reaches
                    log.warning("changelog %s[%d]: nothing after offset %d although its end is %d; recovered so far",
                                tp.topic, tp.partition, position, ends[tp])
                    del todo[tp]
        reader.assign([])
        return applied


class Table:
    """One table as the mapping ``PlannerFlow`` uses, over the partition ``PlannerTables.partition`` names."""

    def __init__(self, tables: PlannerTables, name: str, topic: str) -> None:
        self._tables = tables
        self.name = name
        self.topic = topic

    def _partition(self) -> int:
        partition = self._tables.partition
        if partition is None:
            raise RuntimeError(f"table {self.name} used outside of a catalog partition's record")
        return partition

    def get(self, key: Any, default: Any = None) -> Any:
        raw = self._tables._lookup(self.name, self._partition(), encode(key))
        return default if raw is None else orjson.loads(raw)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._tables._put(self.name, self._partition(), encode(key), encode(value))

    def __delitem__(self, key: Any) -> None:
        self._tables._put(self.name, self._partition(), encode(key), None)

    def partition_items(self, partition: int, after: Any = None) -> Iterator[tuple[Any, Any]]:
        """(key, value) of every entry of one partition this planner owns, writes not yet stored included, in the
        order of their encoded keys, from the first key above ``after`` (None: from the start)."""
        pending = self._tables._written(self.name, partition)
        start = None if after is None else encode(after)
        stored = ((k, v) for k, v in self._tables.store(self.name, partition).items(start) if k not in pending)
        fresh = sorted((k, v) for k, v in pending.items() if v is not None and (start is None or k > start))
        for key, value in heapq.merge(stored, fresh):  # keys are unique across the two: values never compared
            yield orjson.loads(key), orjson.loads(value)


# --- the data folder ------------------------------------------------------------------------------------


def planner_datadir(settings: Settings) -> Path:
    """The data folder of this planner group (two planner groups never share, or misread, a table)."""
    return settings.planner_data_dir / settings.planner_group
