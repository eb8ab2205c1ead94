"""The report on simulated traffic with a known truth: estimates, warnings, text, JSON, gauges and the CLI."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from experiments.aggregate import Aggregator, Totals
from experiments.cli import register
from experiments.metrics import ExperimentMetrics
from experiments.report import analyse, as_dict, render_text
from experiments.simulate import SimulationSpec, simulate_events
from schemas.engagement import Arm, Experiment, Metric

REPO = Path(__file__).parents[2]
EXP = Experiment(
    experiment_id="exp-report", starts_at=datetime(2026, 12, 1, tzinfo=UTC), ends_at=datetime(2026, 12, 8, tzinfo=UTC),
    arms=[Arm(arm_id="control", variant_id="none", weight=0.5), Arm(arm_id="video", variant_id="daily-a", weight=0.5)],
    primary_metric=Metric.ADD_TO_CART, minimum_detectable_effect=0.25,
)
SPEC = SimulationSpec(EXP, users=8000, days=7, add_to_cart={"video": 0.189}, dwell_mean_s={"video": 40.0},
                      duplicate_rate=0.01, seed=1)  # calibration over many seeds: test_experiments_stats/sequential


@pytest.fixture(scope="module")
def totals() -> Totals:
    return Aggregator().add_all(simulate_events(SPEC)).totals()


@pytest.fixture(scope="module")
def report(totals):
    return analyse(EXP, totals, source="test", now=datetime(2026, 12, 9, tzinfo=UTC))


def test_the_known_uplift_is_inside_the_ci_and_a_null_metric_is_not_significant(report):
    atc = report.result("video", Metric.ADD_TO_CART)
    assert atc.fixed.relative.covers(SPEC.true_uplift("video"))
    assert atc.fixed.absolute.p_value < 0.01 and atc.fixed.method == "z"
    assert atc.sequential.ci_low <= SPEC.true_uplift("video") <= atc.sequential.ci_high
    assert atc.cuped is not None and atc.cuped.variance_reduction > 0.05
    dwell = report.result("video", Metric.DWELL)  # same true dwell in both arms
    assert dwell.fixed.method == "welch" and dwell.fixed.relative.covers(0.0)
    assert not report.srm.mismatch and not report.warnings
    assert [p.day for p in report.timeline["video"]] == report.days and len(report.days) >= 7
    assert len(report.categories) == 3 * 3  # three categories × three metrics × one treatment


def test_srm_and_power_warnings(totals):
    declared_70_30 = EXP.model_copy(update={"arms": [Arm(arm_id="control", variant_id="none", weight=0.7),
                                                     Arm(arm_id="video", variant_id="daily-a", weight=0.3)]})
    warned = analyse(declared_70_30, totals, "test")  # the traffic was split 50/50
    assert warned.srm.mismatch and any("sample-ratio mismatch" in w for w in warned.warnings)
    strict = EXP.model_copy(update={"minimum_detectable_effect": 0.02})
    assert any("sample too small" in w and "+2%" in w for w in analyse(strict, totals, "test").warnings)
    assert analyse(EXP, Totals(), "test").warnings == ["no data: the totals have no users for experiment exp-report"]


def test_text_and_json(report):
    text = render_text(report)
    for needle in ("video (daily-a) vs control", "add-to-cart *", "always-valid", "CUPED", "per category",
                   "warnings: none"):
        assert needle in text
    data = orjson.loads(orjson.dumps(as_dict(report)))  # strict JSON: NaN became null
    assert data["experiment"]["experiment_id"] == "exp-report"
    assert {r["metric"] for r in data["results"]} == {"dwell", "add_to_cart", "order"}


def test_gauges(report):
    metrics = ExperimentMetrics()
    metrics.publish(report)
    atc = report.result("video", Metric.ADD_TO_CART)
    labels = {"experiment": "exp-report", "arm": "video", "metric": "add_to_cart"}
    get = metrics.registry.get_sample_value
    assert get("skuvid_experiment_relative_uplift_ratio", labels | {"method": "fixed"}) == atc.fixed.relative.value
    assert get("skuvid_experiment_p_value_ratio", labels | {"method": "sequential"}) == atc.sequential.p_value
    assert get("skuvid_experiment_relative_uplift_ci_low_ratio", labels | {"method": "cuped"}) == (
        atc.cuped.comparison.relative.ci_low)
    assert get("skuvid_experiment_users", {"experiment": "exp-report", "arm": "control"}) == report.arms[0].users
    assert get("skuvid_experiment_srm_mismatch", {"experiment": "exp-report"}) == 0


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="skuvid")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_simulate_then_report(tmp_path: Path, capsys):
    declared = str(REPO / "deploy/experiments/experiments.json")
    totals = tmp_path / "totals.json"
    assert cli("experiment", "simulate", "exp-video-atc", "--experiments", declared, "--users", "3000",
               "--rate", "video=0.189", "--seed", "2", "--totals", str(totals), "--events",
               str(tmp_path / "events.jsonl")) == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert summary["true_uplift"]["video"] == pytest.approx(0.189 / 0.153 - 1)
    assert len((tmp_path / "events.jsonl").read_bytes().splitlines()) == summary["events"]
    out = tmp_path / "out"
    assert cli("experiment", "report", "exp-video-atc", "--experiments", declared, "--totals", str(totals),
               "--out", str(out), "--json", "--metrics-file", str(tmp_path / "exp.prom")) == 0
    printed = orjson.loads(capsys.readouterr().out)
    assert printed["source"] == f"totals file {totals}"
    assert sorted(p.name for p in out.iterdir()) == ["exp-video-atc.html", "exp-video-atc.json",
                                                     "exp-video-atc.totals.json"]
    assert Totals.read(out / "exp-video-atc.totals.json") == Totals.read(totals)
    assert "skuvid_experiment_relative_uplift_ratio{" in (tmp_path / "exp.prom").read_text()


@pytest.mark.parametrize(("argv", "reason"), [
    (["experiment", "report", "nope", "--totals", "x.json"], "unknown_experiment"),
    (["experiment", "report", "exp-video-atc", "--totals", "/no/such/file.json"], "file_unreadable"),
    (["experiment", "report", "exp-video-atc", "--experiments", "/no/such.json"], "file_unreadable"),
    (["experiment", "simulate", "exp-video-atc", "--rate", "nope=0.2"], "invalid_input"),
    (["experiment", "simulate", "exp-video-atc", "--rate", "video=2"], "invalid_input"),
])
def test_cli_bad_input_exits_2_with_a_reason(argv, reason, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert cli(*argv) == 2
    out = orjson.loads(capsys.readouterr().out)
    assert out["reason"] == reason and out["message"]
