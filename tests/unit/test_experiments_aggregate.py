"""Aggregation: exact per-user sums, duplicates once, and identical totals after a crash at any write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from experiments.aggregate import ALL, Aggregator, Applied, Cell, Totals, apply
from experiments.simulate import SimulationSpec, simulate_events
from schemas.engagement import Arm, EngagementEvent, Experiment, Metric, PrePeriod

T0 = datetime(2026, 12, 1, 9, tzinfo=UTC)
EXP = Experiment(
    experiment_id="exp-agg", starts_at=T0, ends_at=T0 + timedelta(days=7),
    arms=[Arm(arm_id="control", variant_id="none", weight=0.5), Arm(arm_id="video", variant_id="v", weight=0.5)],
)


def ev(i: int, kind: str, user: str = "u1", arm: str = "video", category: str = "3c", day: int = 0, **extra):
    return EngagementEvent(event_id=f"e{i}", occurred_at=T0 + timedelta(days=day, minutes=i), kind=kind,
                           experiment_id="exp-agg", arm=arm, user_id=user, sku="SKU-1", category=category,
                           channel="app", region="CN", **extra)


STREAM = [
    ev(1, "page_view", pre_period=PrePeriod(dwell_s=10.0, add_to_cart=2, orders=1)),
    ev(2, "dwell", dwell_s=3.0),
    ev(3, "video_play", watch_time_s=4.5),
    ev(4, "dwell", dwell_s=5.0, day=1, category="kitchen"),
    ev(5, "add_to_cart", day=1),
    ev(6, "add_to_cart", day=1),
    ev(7, "order", day=1),
    ev(8, "page_view", user="u2", arm="control"),
    ev(9, "dwell", user="u2", arm="control", dwell_s=2.0),
    ev(10, "add_to_cart", user="u2", arm="video"),  # wrong arm: stays in the user's first arm, counted
]


def test_per_user_sums_are_exact():
    totals = Aggregator().add_all(STREAM).totals()
    video = totals.cell("exp-agg", "video")
    assert (video.users, video.events, video.exposures, video.plays, video.watch_s) == (1, 7, 1, 1, 4.5)
    assert (video.dwell_s, video.dwell_sq) == (8.0, 64.0)  # one user, 3 + 5 seconds: Σ(user dwell)² = 8²
    assert (video.atc_users, video.add_to_cart, video.order_users, video.orders) == (1, 2, 1, 1)
    assert (video.cov_users, video.x_dwell, video.xy_dwell, video.x_atc, video.xy_atc) == (1, 10.0, 80.0, 2.0, 2.0)
    assert (video.x_order_sq, video.xy_order) == (1.0, 1.0)
    control = totals.cell("exp-agg", "control")
    assert (control.users, control.dwell_sq, control.atc_users, control.arm_mismatch, control.cov_users) == (
        1, 4.0, 1, 1, 0)
    assert totals.categories("exp-agg") == ["3c", "kitchen"]
    kitchen = totals.cell("exp-agg", "video", "kitchen")
    assert (kitchen.users, kitchen.dwell_s, kitchen.events) == (1, 5.0, 1)
    day0 = totals.cell("exp-agg", "video", ALL, through_day="2026-12-01")
    assert (day0.dwell_s, day0.dwell_sq, day0.atc_users) == (3.0, 9.0, 0)  # as of day 0: 3 s, no cart yet
    sums = video.metric_sums(Metric.ADD_TO_CART)
    assert (sums.n, sums.y, sums.y2, sums.x, sums.xy, sums.n_cov) == (1, 1, 1, 2.0, 2.0, 1)


def test_duplicates_are_counted_once_however_late():
    clean = Aggregator().add_all(STREAM)
    noisy = Aggregator().add_all([*STREAM[:4], STREAM[1], *STREAM[4:], STREAM[0], STREAM[9], STREAM[6]])
    assert noisy.totals() == clean.totals()
    assert (noisy.counted, noisy.duplicates) == (len(STREAM), 4)


def test_a_late_pre_period_gives_the_same_covariate_sums_as_an_early_one():
    """Out-of-order input (not keyed by user): the user enters the CUPED sums of every row they are in."""
    early = Aggregator().add_all(STREAM[:7]).totals()
    late = Aggregator().add_all([*STREAM[1:7], STREAM[0]]).totals()
    for row in (ALL, "3c", "kitchen"):
        a, b = early.cell("exp-agg", "video", row), late.cell("exp-agg", "video", row)
        assert a == b, row
    assert late.cell("exp-agg", "video", "kitchen").cov_users == 1


class WriteLog(dict):
    """A dict that records every assignment in order: the changelog of a faust table."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[int, str, object]] = []  # (offset being processed, key, value)
        self.offset = -1

    def __setitem__(self, key, value) -> None:
        self.writes.append((self.offset, key, value))
        super().__setitem__(key, value)


def run_logged(events: list[EngagementEvent]) -> WriteLog:
    state = WriteLog()
    for offset, event in enumerate(events):
        state.offset = offset
        apply(state, event, 0, offset)
    return state


def test_a_crash_at_any_write_gives_identical_totals_after_replay():
    """Kill after any prefix of the changelog; recover the table from it; replay from any offset that faust could
    have committed (every event before it fully flushed) — the totals equal an uninterrupted run, exactly."""
    events = simulate_events(SimulationSpec(EXP, users=14, days=2, duplicate_rate=0.2, seed=3))
    assert 40 < len(events) < 120
    clean = run_logged(events)
    expected = Totals.from_state(clean.items())
    replays = 0
    for cut in range(len(clean.writes) + 1):
        crashed_in = clean.writes[cut][0] if cut < len(clean.writes) else len(events)
        for committed in sorted({0, crashed_in // 2, crashed_in}):
            recovered = {key: value for _, key, value in clean.writes[:cut]}
            for offset in range(committed, len(events)):
                apply(recovered, events[offset], 0, offset)
            assert Totals.from_state(recovered.items()) == expected, (cut, committed)
            replays += 1
    assert replays > 2 * len(clean.writes)


def test_the_crash_test_can_fail_without_the_offset_guard(monkeypatch):
    """Without ``last_offset`` a replay after a crash between an event's cell writes books it twice."""
    events = STREAM[:3]
    clean = run_logged(events)
    cut = next(i for i, (off, key, _) in enumerate(clean.writes) if off == 1 and key.startswith('["t"')) + 1
    recovered = {key: value for _, key, value in clean.writes[:cut]}
    for name, value in list(recovered.items()):
        if name.startswith('["t"'):
            recovered[name] = {**value, "last_offset": -1}  # forget what was booked
    for offset in range(1, len(events)):
        apply(recovered, events[offset], 0, offset)
    assert Totals.from_state(recovered.items()) != Totals.from_state(clean.items())


def test_partitions_add_up_and_keys_survive_any_category_text():
    events = simulate_events(SimulationSpec(EXP, users=300, days=3, seed=5, categories=('美妆|"x"', "3c")))
    one = Aggregator().add_all(events).totals()
    six = Aggregator(partition_of=lambda user: hash(user) % 6).add_all(events).totals()
    assert one.categories("exp-agg") == ['3c', '美妆|"x"']
    for arm in ("control", "video"):
        a, b = one.cell("exp-agg", arm), six.cell("exp-agg", arm)
        for name, value in a.as_dict().items():
            assert b.as_dict()[name] == pytest.approx(value, rel=1e-12), name


def test_totals_file_round_trip():
    totals = Aggregator().add_all(STREAM).totals()
    assert Totals.from_json(totals.to_json()) == totals
    with pytest.raises(ValueError, match="not an experiment totals file"):
        Totals.from_json(b'{"cells": []}')
    assert Cell().as_dict()["users"] == 0
    assert apply({}, STREAM[0], 0, 0) is Applied.COUNTED
