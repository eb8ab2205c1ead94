"""The analysis of one experiment from its aggregated totals: every arm against control, on every metric.

For each treatment arm and metric the report gives the fixed-horizon result (means, absolute and relative
uplift, 95 % CIs, p-values: ``stats``), the always-valid result of the same relative uplift looked at once a
day (``sequential``, mixture ``tau`` = the declared minimum detectable effect), the CUPED result when
pre-period covariates are present (``cuped``), and a power check; plus the sample-ratio test, per-category
rows (fixed horizon), the day-by-day cumulative uplift of the primary metric, and warnings.

Which result to act on: the fixed-horizon one *only* at the planned end (``ends_at``); before that, the
always-valid one. ``render_text`` prints the table; ``as_json`` is the same content for machines;
``experiments.html`` draws it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import orjson
from pydantic import BaseModel

from experiments.aggregate import ALL, Cell, Totals
from experiments.cuped import CupedResult, cuped
from experiments.sequential import SequentialResult, msprt
from experiments.stats import (
    Comparison,
    Estimate,
    PowerCheck,
    SampleRatio,
    compare,
    power_check,
    sample_ratio,
)
from schemas.engagement import Experiment, Metric

METRICS = (Metric.DWELL, Metric.ADD_TO_CART, Metric.ORDER)
METRIC_LABELS = {Metric.DWELL: "dwell s/user", Metric.ADD_TO_CART: "add-to-cart", Metric.ORDER: "order conv."}


@dataclass(frozen=True)
class ArmSummary:
    arm_id: str
    variant_id: str
    weight: float
    users: int
    exposures: int
    plays: int
    watch_s: float
    dwell_mean_s: float  # mean total dwell seconds per user
    add_to_cart_rate: float  # share of users with an add to cart
    order_rate: float  # share of users with an order
    arm_mismatch: int


@dataclass(frozen=True)
class MetricResult:
    arm_id: str
    metric: Metric
    fixed: Comparison
    sequential: SequentialResult  # always-valid, on the relative uplift
    cuped: CupedResult | None
    power: PowerCheck


@dataclass(frozen=True)
class CategoryResult:
    category: str
    arm_id: str
    metric: Metric
    fixed: Comparison


@dataclass(frozen=True)
class TimelinePoint:
    """Cumulative totals at the end of ``day`` (UTC): the primary metric's relative uplift then."""

    day: str
    users_control: int
    users_treatment: int
    relative: Estimate  # fixed-horizon (pointwise) estimate and CI
    sequential_low: float  # always-valid CI (running intersection)
    sequential_high: float
    sequential_p: float


@dataclass(frozen=True)
class Report:
    experiment: Experiment
    source: str
    generated_at: str
    days: list[str]
    arms: list[ArmSummary]
    srm: SampleRatio
    results: list[MetricResult]
    categories: list[CategoryResult]
    timeline: dict[str, list[TimelinePoint]]  # treatment arm id -> one point per day
    warnings: list[str]

    def result(self, arm_id: str, metric: Metric) -> MetricResult:
        return next(r for r in self.results if r.arm_id == arm_id and r.metric is metric)


def analyse(experiment: Experiment, totals: Totals, source: str, now: datetime | None = None) -> Report:
    """The report of ``experiment`` from ``totals`` (any arms in the data that are not declared are warned about)."""
    eid = experiment.experiment_id
    days = totals.days(eid)
    control = experiment.control
    cells = {a.arm_id: totals.cell(eid, a.arm_id) for a in experiment.arms}
    arms = [_summary(a.arm_id, a.variant_id, a.weight, cells[a.arm_id]) for a in experiment.arms]
    srm = sample_ratio({a.arm_id: int(cells[a.arm_id].users) for a in experiment.arms},
                       {a.arm_id: a.weight for a in experiment.arms})
    results, categories, timeline = [], [], {}
    for arm in experiment.treatments:
        for metric in METRICS:
            results.append(_metric_result(experiment, totals, arm.arm_id, metric, days))
        timeline[arm.arm_id] = _timeline(experiment, totals, arm.arm_id, days)
        for category in totals.categories(eid):
            t, c = totals.cell(eid, arm.arm_id, category), totals.cell(eid, control.arm_id, category)
            for metric in METRICS:
                fixed = compare(metric, t.metric_sums(metric), c.metric_sums(metric), experiment.alpha)
                categories.append(CategoryResult(category, arm.arm_id, metric, fixed))
    report = Report(
        experiment=experiment, source=source, generated_at=(now or datetime.now(UTC)).isoformat(timespec="seconds"),
        days=days, arms=arms, srm=srm, results=results, categories=categories, timeline=timeline, warnings=[],
    )
    report.warnings.extend(_warnings(report, totals))
    return report


def _summary(arm_id: str, variant_id: str, weight: float, cell: Cell) -> ArmSummary:
    users = int(cell.users)
    share = (lambda x: x / users) if users else (lambda _x: math.nan)
    return ArmSummary(arm_id, variant_id, weight, users, int(cell.exposures), int(cell.plays), cell.watch_s,
                      share(cell.dwell_s), share(cell.atc_users), share(cell.order_users), int(cell.arm_mismatch))


def _metric_result(experiment: Experiment, totals: Totals, arm_id: str, metric: Metric,
                   days: list[str]) -> MetricResult:
    eid, control, alpha = experiment.experiment_id, experiment.control.arm_id, experiment.alpha
    t = totals.cell(eid, arm_id).metric_sums(metric)
    c = totals.cell(eid, control).metric_sums(metric)
    fixed = compare(metric, t, c, alpha)
    looks = [compare(metric, totals.cell(eid, arm_id, ALL, d).metric_sums(metric),
                     totals.cell(eid, control, ALL, d).metric_sums(metric), alpha).relative for d in days]
    sequential = msprt([e.value for e in looks], [e.se**2 for e in looks], experiment.minimum_detectable_effect, alpha)
    power = power_check(metric, t, c, experiment.minimum_detectable_effect, alpha, experiment.power)
    return MetricResult(arm_id, metric, fixed, sequential, cuped(metric, t, c, alpha), power)


def _timeline(experiment: Experiment, totals: Totals, arm_id: str, days: list[str]) -> list[TimelinePoint]:
    eid, control, metric = experiment.experiment_id, experiment.control.arm_id, experiment.primary_metric
    points: list[TimelinePoint] = []
    values: list[float] = []
    variances: list[float] = []
    for day in days:
        t = totals.cell(eid, arm_id, ALL, day).metric_sums(metric)
        c = totals.cell(eid, control, ALL, day).metric_sums(metric)
        relative = compare(metric, t, c, experiment.alpha).relative
        values.append(relative.value)
        variances.append(relative.se**2)
        seq = msprt(values, variances, experiment.minimum_detectable_effect, experiment.alpha)
        points.append(TimelinePoint(day, c.n, t.n, relative, seq.ci_low, seq.ci_high, seq.p_value))
    return points


def _warnings(report: Report, totals: Totals) -> list[str]:
    exp = report.experiment
    out = []
    if not any(a.users for a in report.arms):
        out.append(f"no data: the totals have no users for experiment {exp.experiment_id}")
        return out
    undeclared = sorted(set(totals.arms(exp.experiment_id)) - {a.arm_id for a in exp.arms})
    if undeclared:
        out.append(f"arms in the data that are not declared (ignored): {', '.join(undeclared)}")
    if report.srm.mismatch:
        observed = ", ".join(f"{a} {n}" for a, n in report.srm.observed.items())
        expected = ", ".join(f"{a} {n:.0f}" for a, n in report.srm.expected.items())
        out.append(f"sample-ratio mismatch: users {observed}, expected {expected} (chi-square p = "
                   f"{report.srm.p_value:.2g} < 0.001): assignment or logging is broken, do not trust the results")
    for r in report.results:
        if r.metric is exp.primary_metric and r.power.underpowered:
            out.append(
                f"{r.arm_id}: sample too small for the minimum detectable effect on {r.metric.value}: "
                f"+{exp.minimum_detectable_effect:.0%} needs {math.ceil(r.power.required_control)} control / "
                f"{math.ceil(r.power.required_treatment)} treatment users at {exp.power:.0%} power, there are "
                f"{r.fixed.n_control} / {r.fixed.n_treatment} (detectable now: {r.power.achieved_mde:+.1%})"
            )
    mismatched = sum(a.arm_mismatch for a in report.arms)
    if mismatched:
        out.append(f"{mismatched} events carried another arm than their user's first event (booked in the first)")
    return out


# ---- text ---------------------------------------------------------------------------------------------------

def pct_text(x: float, signed: bool = True) -> str:
    return "n/a" if not math.isfinite(x) else (f"{x:+.1%}" if signed else f"{x:.2%}")


def p_text(x: float) -> str:
    return "n/a" if not math.isfinite(x) else (f"{x:.3f}" if x >= 0.001 else f"{x:.1e}")


def value_text(metric: Metric, x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:.2f}" if metric is Metric.DWELL else f"{x:.2%}"


def diff_text(metric: Metric, e: Estimate) -> str:
    if not math.isfinite(e.value):
        return "n/a"
    if metric is Metric.DWELL:
        return f"{e.value:+.2f}s [{e.ci_low:+.2f}, {e.ci_high:+.2f}]"
    return f"{100 * e.value:+.2f}pp [{100 * e.ci_low:+.2f}, {100 * e.ci_high:+.2f}]"


def rel_text(e_value: float, low: float, high: float) -> str:
    if not math.isfinite(e_value):
        return "n/a"
    return f"{pct_text(e_value)} [{pct_text(low)}, {pct_text(high)}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def render_text(report: Report) -> str:
    """The report as a plain-text table (what ``skuvid experiment report`` prints)."""
    exp = report.experiment
    lines = [
        f"experiment {exp.experiment_id}: primary metric {exp.primary_metric.value}, control {exp.control.arm_id}, "
        f"{exp.starts_at:%Y-%m-%d} to {exp.ends_at:%Y-%m-%d}, MDE {exp.minimum_detectable_effect:+.0%}",
        f"source: {report.source}; days with data: {report.days[0] if report.days else '-'} .. "
        f"{report.days[-1] if report.days else '-'}",
        "",
    ]
    lines += _table(
        ["arm", "variant", "weight", "users", "exposures", "plays", "dwell s/user", "add-to-cart", "order conv."],
        [[a.arm_id, a.variant_id, f"{a.weight:g}", str(a.users), str(a.exposures), str(a.plays),
          value_text(Metric.DWELL, a.dwell_mean_s), pct_text(a.add_to_cart_rate, False), pct_text(a.order_rate, False)]
         for a in report.arms],
    )
    lines += ["", f"sample ratio: chi-square {report.srm.chi2:.3g}, p = {p_text(report.srm.p_value)}"
              f"{'  MISMATCH' if report.srm.mismatch else ''}"]
    for arm in exp.treatments:
        lines += ["", f"{arm.arm_id} ({arm.variant_id}) vs {exp.control.arm_id}"]
        rows = []
        for r in (r for r in report.results if r.arm_id == arm.arm_id):
            f, s, cu = r.fixed, r.sequential, r.cuped
            rows.append([
                METRIC_LABELS[r.metric] + (" *" if r.metric is exp.primary_metric else ""),
                value_text(r.metric, f.control), value_text(r.metric, f.treatment), diff_text(r.metric, f.absolute),
                p_text(f.absolute.p_value), rel_text(f.relative.value, f.relative.ci_low, f.relative.ci_high),
                rel_text(f.relative.value, s.ci_low, s.ci_high), p_text(s.p_value),
                "n/a" if cu is None else rel_text(cu.comparison.relative.value, cu.comparison.relative.ci_low,
                                              cu.comparison.relative.ci_high),
                "n/a" if cu is None else pct_text(-cu.variance_reduction),
            ])
        lines += _table(["metric", "control", "treatment", "abs uplift [95% CI]", "p", "rel uplift [95% CI]",
                         "always-valid CI", "always-valid p", "CUPED rel [95% CI]", "CUPED var"], rows)
    if report.categories:
        lines += ["", "per category (fixed horizon)"]
        lines += _table(
            ["category", "arm", "metric", "users c/t", "control", "treatment", "rel uplift [95% CI]", "p"],
            [[c.category, c.arm_id, METRIC_LABELS[c.metric], f"{c.fixed.n_control}/{c.fixed.n_treatment}",
              value_text(c.metric, c.fixed.control), value_text(c.metric, c.fixed.treatment),
              rel_text(c.fixed.relative.value, c.fixed.relative.ci_low, c.fixed.relative.ci_high),
              p_text(c.fixed.absolute.p_value)] for c in report.categories],
        )
    lines += ["", "warnings:" if report.warnings else "warnings: none"]
    lines += [f"  ! {w}" for w in report.warnings]
    return "\n".join(lines) + "\n"


def _json_default(obj):
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def as_dict(report: Report) -> dict:
    """The report as JSON-able data (NaN and infinities become null)."""
    return orjson.loads(orjson.dumps(report, default=_json_default, option=orjson.OPT_NON_STR_KEYS))


def as_json(report: Report) -> bytes:
    return orjson.dumps(as_dict(report), option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
