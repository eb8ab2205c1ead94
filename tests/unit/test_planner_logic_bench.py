"""bench.planner_logic: the planner's decisions without Kafka, timed; every fan-out request accounted for."""

from __future__ import annotations

import pytest

from bench import planner_logic


def test_the_ceiling_bench_plans_every_product_and_reports_cpu_per_record():
    result = planner_logic.run(n=40, skus=120, repeats=1)
    for side, unit in (("distinct", "cpu_us_per_product"), ("fanout", "cpu_us_per_request")):
        figures = result[side]
        assert figures[unit] > 0
        assert figures["ceiling_per_s"] == pytest.approx(1e6 / figures[unit], rel=1e-3)


def test_the_fanout_side_sends_one_hot_request_per_catalog_product(monkeypatch):
    sinks = []

    class Sink(planner_logic._Sink):
        def __init__(self) -> None:
            super().__init__()
            sinks.append(self)

    monkeypatch.setattr(planner_logic, "_Sink", Sink)
    planner_logic.fanout(90)
    (sink,) = sinks
    assert sink.counts["video.requested.hot"] == 90
    assert len(sink.hot_keys) == 90  # one per SKU (the request's key), none twice
    assert sink.counts["video.planned"] == 90  # and its plan recorded
