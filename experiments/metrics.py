"""The experiment agent's counter and the report's figures as Prometheus gauges, in one registry.

The agent exports how many engagement events it counted, skipped as duplicates or dead-lettered. The report's
figures (users, means, uplifts with CI bounds, p-values, SRM, CUPED) are computed from the totals of *all*
partitions, which no single agent worker holds, so they are published by ``skuvid experiment report
--metrics-file FILE`` in the text exposition format (the node-exporter textfile collector, or any job that
ships the file). Labels are bounded: experiments and arms are declared, metrics and methods are fixed sets.
"""

from __future__ import annotations

import math
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, write_to_textfile

from experiments.report import Report
from schemas.engagement import Metric


def _set(gauge, value: float, **labels: str) -> None:
    """NaN is a legal gauge value: "not known yet" stays visible as a series instead of vanishing."""
    gauge.labels(**labels).set(value if value is not None else math.nan)


class ExperimentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "skuvid_experiment_events_total", "Engagement events seen by the experiment agent, by outcome "
            "(counted, duplicate, dead_letter).", ["outcome"], registry=r,
        )
        arm = ["experiment", "arm"]
        self.users = Gauge("skuvid_experiment_users", "Users per experiment arm.", arm, registry=r)
        self.dwell = Gauge("skuvid_experiment_dwell_seconds", "Mean total dwell per user, per arm.", arm, registry=r)
        self.conversion = Gauge(
            "skuvid_experiment_conversion_ratio", "Share of an arm's users who added to cart / ordered.",
            [*arm, "metric"], registry=r,
        )
        compared = [*arm, "metric", "method"]
        self.uplift = Gauge(
            "skuvid_experiment_relative_uplift_ratio", "Relative uplift vs control (treatment/control - 1); "
            "method: fixed, sequential (always valid) or cuped.", compared, registry=r,
        )
        self.uplift_low = Gauge("skuvid_experiment_relative_uplift_ci_low_ratio", "Lower bound of its 95% CI.",
                                compared, registry=r)
        self.uplift_high = Gauge("skuvid_experiment_relative_uplift_ci_high_ratio", "Upper bound of its 95% CI.",
                                 compared, registry=r)
        self.p_value = Gauge("skuvid_experiment_p_value_ratio", "p-value of no difference, by method.", compared,
                             registry=r)
        self.cuped_reduction = Gauge(
            "skuvid_experiment_cuped_variance_reduction_ratio", "1 - Var(CUPED difference) / Var(difference).",
            [*arm, "metric"], registry=r,
        )
        self.srm_p_value = Gauge("skuvid_experiment_srm_p_value_ratio", "Sample-ratio chi-square p-value.",
                                 ["experiment"], registry=r)
        self.srm_mismatch = Gauge("skuvid_experiment_srm_mismatch", "1 when the split is off (p < 0.001).",
                                  ["experiment"], registry=r)
        self.underpowered = Gauge(
            "skuvid_experiment_underpowered", "1 when the sample cannot detect the declared MDE on the metric.",
            [*arm, "metric"], registry=r,
        )

    def publish(self, report: Report) -> None:
        """Set every gauge of ``report``'s experiment to the report's figures."""
        eid = report.experiment.experiment_id
        for a in report.arms:
            _set(self.users, a.users, experiment=eid, arm=a.arm_id)
            _set(self.dwell, a.dwell_mean_s, experiment=eid, arm=a.arm_id)
            _set(self.conversion, a.add_to_cart_rate, experiment=eid, arm=a.arm_id, metric=Metric.ADD_TO_CART.value)
            _set(self.conversion, a.order_rate, experiment=eid, arm=a.arm_id, metric=Metric.ORDER.value)
        for r in report.results:
            labels = {"experiment": eid, "arm": r.arm_id, "metric": r.metric.value}
            rel = r.fixed.relative
            rows = [("fixed", rel.value, rel.ci_low, rel.ci_high, r.fixed.absolute.p_value),
                    ("sequential", rel.value, r.sequential.ci_low, r.sequential.ci_high, r.sequential.p_value)]
            if r.cuped is not None:
                c = r.cuped.comparison
                rows.append(("cuped", c.relative.value, c.relative.ci_low, c.relative.ci_high, c.absolute.p_value))
                _set(self.cuped_reduction, r.cuped.variance_reduction, **labels)
            for method, value, low, high, p in rows:
                _set(self.uplift, value, method=method, **labels)
                _set(self.uplift_low, low, method=method, **labels)
                _set(self.uplift_high, high, method=method, **labels)
                _set(self.p_value, p, method=method, **labels)
            _set(self.underpowered, float(r.power.underpowered), **labels)
        _set(self.srm_p_value, report.srm.p_value, experiment=eid)
        _set(self.srm_mismatch, float(report.srm.mismatch), experiment=eid)

    def write_textfile(self, path: Path) -> None:
        """Atomically write the registry in the text exposition format (node-exporter textfile collector)."""
        write_to_textfile(str(path), self.registry)
