"""Per experiment × arm × category × day sufficient statistics, from engagement events — broker-free.

The experiment agent (``consumers/experiment_agent.py``) calls ``apply`` for each event with its faust table as
``state``; tests and the simulator call it with a plain dict. Everything the report needs is a sum, so
partitions, days and categories add up: the report sums cells, never re-reads events.

Unit of analysis: the user. Per user and row (row = the whole experiment ``ALL``, or one category), the
state keeps the user's total dwell and whether they added to cart / ordered; a cell holds, for the users of
one arm, ``users``, ``Σ dwell``, ``Σ dwell²``, converters, and the CUPED sums ``Σx``, ``Σx²``, ``Σxy`` of the
pre-period covariate ``x`` (from the user's first page view that carries ``pre_period``; if it comes after
other events of the user, the user enters the covariate sums of their rows then).
Each change is booked in the cell of the event's UTC day, so the cells up to day *d* are the totals as of *d*.

Exactly-once totals from at-least-once input
--------------------------------------------
* Duplicates (a producer retry, or the agent's own re-forwarding after a crash) carry the same ``event_id``
  and, keyed by user, land in the same partition: the user record remembers its last ``RECENT_EVENTS``
  event ids and a repeated one is skipped.
* Crash mid-event. All writes of one event go to the same changelog partition (faust writes a table change to
  the partition of the event being processed), cells first and the user record last, and Kafka keeps their
  order: after a crash a *prefix* of them survives. Each cell remembers the last source offset it applied
  (``last_offset``); when the event is delivered again, cells that already have it are skipped, the others get
  the same delta again (computed from the user record, which did not survive either). If the user record
  survived, every cell did, and the event id in it makes the replay a duplicate.
Keys of ``state`` are JSON arrays (strings), so categories may contain any character.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field, fields
from datetime import UTC
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from schemas.engagement import EngagementEvent, EngagementKind, Metric

ALL = ""  # the row of the whole experiment (no category has an empty name)
RECENT_EVENTS = 100  # event ids remembered per user for deduplication
TOTALS_FORMAT = "skuvid.experiment-totals/1"



@dataclass
class Cell:
    """Sums over the users of one arm in one row and day (or over any set of cells, once added up)."""

    events: float = 0  # distinct events applied
    users: float = 0  # users first seen in this row on this day
    exposures: float = 0  # page views
    plays: float = 0
    watch_s: float = 0.0
    dwell_s: float = 0.0  # Σ over users of their dwell seconds
    dwell_sq: float = 0.0  # Σ over users of (their dwell seconds)²
    atc_users: float = 0  # users with at least one add to cart
    order_users: float = 0  # users with at least one order
    add_to_cart: float = 0  # add-to-cart actions
    orders: float = 0  # order actions
    arm_mismatch: float = 0  # events whose arm differs from the user's first arm (counted in the first)
    cov_users: float = 0  # users with a pre-period covariate
    x_dwell: float = 0.0
    x_dwell_sq: float = 0.0
    xy_dwell: float = 0.0
    x_atc: float = 0.0
    x_atc_sq: float = 0.0
    xy_atc: float = 0.0
    x_order: float = 0.0
    x_order_sq: float = 0.0
    xy_order: float = 0.0

    def add(self, other: Cell | Mapping[str, float]) -> None:
        values = other if isinstance(other, Mapping) else other.as_dict()
        for name in CELL_FIELDS:
            setattr(self, name, getattr(self, name) + values.get(name, 0))

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in CELL_FIELDS}

    def metric_sums(self, metric: Metric) -> MetricSums:
        """The sufficient statistics of one per-user metric (``y``) and its covariate (``x``)."""
        if metric is Metric.DWELL:
            y, y2, x, x2, xy = self.dwell_s, self.dwell_sq, self.x_dwell, self.x_dwell_sq, self.xy_dwell
        elif metric is Metric.ADD_TO_CART:
            y = y2 = self.atc_users
            x, x2, xy = self.x_atc, self.x_atc_sq, self.xy_atc
        else:
            y = y2 = self.order_users
            x, x2, xy = self.x_order, self.x_order_sq, self.xy_order
        return MetricSums(n=int(self.users), y=y, y2=y2, x=x, x2=x2, xy=xy, n_cov=int(self.cov_users))


CELL_FIELDS = tuple(f.name for f in fields(Cell))


@dataclass(frozen=True)
class MetricSums:
    """Σ over ``n`` users of ``y``, ``y²``, ``x``, ``x²``, ``x·y`` (``x``: pre-period covariate, 0 when absent)."""

    n: int
    y: float
    y2: float
    x: float = 0.0
    x2: float = 0.0
    xy: float = 0.0
    n_cov: int = 0

    @property
    def mean(self) -> float:
        return self.y / self.n if self.n else float("nan")

    @property
    def var(self) -> float:
        """Sample variance of ``y`` (ddof 1), never negative."""
        if self.n < 2:
            return float("nan")
        return max(0.0, (self.y2 - self.y * self.y / self.n) / (self.n - 1))


class Applied(StrEnum):
    COUNTED = "counted"
    DUPLICATE = "duplicate"


def cell_key(experiment_id: str, arm: str, category: str, day: str, partition: int) -> str:
    return orjson.dumps(["t", experiment_id, arm, category, day, partition]).decode()


def user_key(experiment_id: str, user_id: str) -> str:
    return orjson.dumps(["u", experiment_id, user_id]).decode()


def event_day(event: EngagementEvent) -> str:
    return event.occurred_at.astimezone(UTC).date().isoformat()


def apply(state: MutableMapping[str, Any], event: EngagementEvent, partition: int, offset: int) -> Applied:
    """Book ``event`` (read from ``partition`` at ``offset``) into ``state``; idempotent, see the module doc.

    ``offset`` must grow with each call for one ``partition`` (Kafka offsets do). Values written to ``state``
    are fresh JSON-able dicts, never mutated afterwards (a faust table only logs assignments).
    """
    ukey = user_key(event.experiment_id, event.user_id)
    stored = state.get(ukey)
    if stored is not None and event.event_id in stored["recent"]:
        return Applied.DUPLICATE
    if stored is None:
        user = {"arm": event.arm, "x": None, "rows": {}, "recent": []}
    else:
        user = {**stored, "rows": dict(stored["rows"])}
    newly_x = user["x"] is None and (x := _covariate(event)) is not None
    if newly_x:
        user["x"] = x
    event_rows = list(dict.fromkeys((ALL, event.category)))
    rows = event_rows + ([r for r in user["rows"] if r not in event_rows] if newly_x else [])
    day = event_day(event)
    for row in rows:
        after, delta = _row_delta(event if row in event_rows else None, user, newly_x, user["rows"].get(row))
        user["rows"][row] = after
        key = cell_key(event.experiment_id, user["arm"], row, day, partition)
        cell = state.get(key)
        if cell is not None and cell["last_offset"] >= offset:
            continue  # booked before a crash that lost the user record: do not book twice
        merged = dict(cell) if cell is not None else dict.fromkeys(CELL_FIELDS, 0)
        for name, value in delta.items():
            merged[name] = merged.get(name, 0) + value
        merged["last_offset"] = offset
        state[key] = merged
    user["recent"] = [*user["recent"], event.event_id][-RECENT_EVENTS:]
    state[ukey] = user  # last: its survival implies every cell's
    return Applied.COUNTED


def _covariate(event: EngagementEvent) -> list[float] | None:
    """``[pre dwell, pre add-to-carts, pre orders]`` from a page view that carries them."""
    pre = event.pre_period if event.kind is EngagementKind.PAGE_VIEW else None
    return [pre.dwell_s, float(pre.add_to_cart), float(pre.orders)] if pre is not None else None


def _row_delta(event: EngagementEvent | None, user: dict[str, Any], newly_x: bool,
               row: list | None) -> tuple[list, dict[str, float]]:
    """The user's new ``[dwell, added_to_cart, ordered]`` in one row, and the change it makes to the cell.

    ``event`` is None for a row the event does not touch but whose covariate sums the user now enters (the
    pre-period arrived after other events of the user, e.g. when the input is not keyed by user)."""
    x = user["x"]
    dwell, atc, ordered = row if row is not None else (0.0, 0, 0)
    delta: dict[str, float] = {}
    if event is not None:
        delta["events"] = 1
        if event.arm != user["arm"]:
            delta["arm_mismatch"] = 1
        if row is None:
            delta["users"] = 1
    if x is not None and (row is None or newly_x):  # the user enters this row's covariate sums
        delta |= {"cov_users": 1, "x_dwell": x[0], "x_dwell_sq": x[0] ** 2, "x_atc": x[1], "x_atc_sq": x[1] ** 2,
                  "x_order": x[2], "x_order_sq": x[2] ** 2, "xy_dwell": x[0] * dwell, "xy_atc": x[1] * atc,
                  "xy_order": x[2] * ordered}
    kind = event.kind if event is not None else None
    if kind is EngagementKind.PAGE_VIEW:
        delta["exposures"] = 1
    elif kind is EngagementKind.VIDEO_PLAY:
        delta |= {"plays": 1, "watch_s": event.watch_time_s}
    elif kind is EngagementKind.DWELL:
        new = dwell + event.dwell_s
        delta |= {"dwell_s": event.dwell_s, "dwell_sq": new * new - dwell * dwell}
        if x is not None:
            delta["xy_dwell"] = delta.get("xy_dwell", 0.0) + x[0] * event.dwell_s
        dwell = new
    elif kind is EngagementKind.ADD_TO_CART:
        delta["add_to_cart"] = 1
        if not atc:
            delta["atc_users"] = 1
            if x is not None:
                delta["xy_atc"] = delta.get("xy_atc", 0.0) + x[1]
            atc = 1
    elif kind is EngagementKind.ORDER:
        delta["orders"] = 1
        if not ordered:
            delta["order_users"] = 1
            if x is not None:
                delta["xy_order"] = delta.get("xy_order", 0.0) + x[2]
            ordered = 1
    return [dwell, atc, ordered], delta


@dataclass
class Totals:
    """Cells summed over partitions: (experiment, arm, category, day) -> Cell. ``ALL`` is the whole-experiment row."""

    cells: dict[tuple[str, str, str, str], Cell] = field(default_factory=dict)

    @classmethod
    def from_state(cls, items: Iterable[tuple[str, Any]]) -> Totals:
        """From ``state`` entries (a dict's or faust table's items, or a changelog's latest values); user records
        and anything that is not a cell are skipped. Partitions are summed in key order (deterministic floats)."""
        parsed = []
        for key, value in items:
            if not key.startswith('["t"') or value is None:
                continue
            _, experiment_id, arm, category, day, partition = orjson.loads(key)
            parsed.append(((experiment_id, arm, category, day), partition, value))
        totals = cls()
        for where, _, value in sorted(parsed, key=lambda item: (item[0], item[1])):
            totals.cells.setdefault(where, Cell()).add(value)
        return totals

    def experiment_ids(self) -> list[str]:
        return sorted({k[0] for k in self.cells})

    def arms(self, experiment_id: str) -> list[str]:
        return sorted({k[1] for k in self.cells if k[0] == experiment_id})

    def categories(self, experiment_id: str) -> list[str]:
        return sorted({k[2] for k in self.cells if k[0] == experiment_id and k[2] != ALL})

    def days(self, experiment_id: str) -> list[str]:
        return sorted({k[3] for k in self.cells if k[0] == experiment_id})

    def cell(self, experiment_id: str, arm: str, category: str = ALL, through_day: str | None = None) -> Cell:
        """The sum of one arm's cells in one row over all days (or days up to and including ``through_day``)."""
        total = Cell()
        for (e, a, c, d), cell in sorted(self.cells.items()):
            if e == experiment_id and a == arm and c == category and (through_day is None or d <= through_day):
                total.add(cell)
        return total

    def to_json(self) -> bytes:
        rows = [{"experiment_id": e, "arm": a, "category": c, "day": d, **cell.as_dict()}
                for (e, a, c, d), cell in sorted(self.cells.items())]
        return orjson.dumps({"format": TOTALS_FORMAT, "cells": rows}, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> Totals:
        doc = orjson.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != TOTALS_FORMAT:
            raise ValueError(f"not an experiment totals file (expected format {TOTALS_FORMAT!r})")
        totals = cls()
        for row in doc["cells"]:
            where = (row["experiment_id"], row["arm"], row["category"], row["day"])
            totals.cells.setdefault(where, Cell()).add(row)
        return totals

    @classmethod
    def read(cls, path: Path) -> Totals:
        return cls.from_json(path.read_bytes())


class Aggregator:
    """``apply`` over a plain dict, for the simulator, the bench and tests: one partition unless told otherwise.

    ``partition_of(user_id) -> int`` lets a test mirror the agent's partitioning exactly; offsets are counted
    per partition like Kafka's.
    """

    def __init__(self, partition_of=None) -> None:
        self.state: dict[str, Any] = {}
        self._partition_of = partition_of or (lambda _user: 0)
        self._next_offset: dict[int, int] = {}
        self.counted = 0
        self.duplicates = 0

    def add(self, event: EngagementEvent) -> Applied:
        partition = self._partition_of(event.user_id)
        offset = self._next_offset.get(partition, 0)
        self._next_offset[partition] = offset + 1
        outcome = apply(self.state, event, partition, offset)
        if outcome is Applied.COUNTED:
            self.counted += 1
        else:
            self.duplicates += 1
        return outcome

    def add_all(self, events: Iterable[EngagementEvent]) -> Aggregator:
        for event in events:
            self.add(event)
        return self

    def totals(self) -> Totals:
        return Totals.from_state(self.state.items())
