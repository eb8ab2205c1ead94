"""Does the experiment analysis find the truth, and only the truth? The study's add-to-cart case, seeded.

1. **Study case** (one experiment, event level): 14 days of 2,000 users a day split 50/50, control add-to-cart
   15.3 %, video arm 18.9 % (true relative uplift +23.5 %), with pre-period covariates and 1 % duplicated
   events. The simulated stream goes through the real aggregator (``experiments.aggregate``) and the real
   report (``experiments.report``): ``estimated_uplift`` and its 95 % CI (delta method) should hold
   ``true_uplift``; ``cuped_variance_reduction`` is CUPED's cut of the variance of the difference.
2. **Null experiments** (``null_experiments``, default 2,000; vectorised): the same traffic with no effect.
   ``null_false_positive_rate``: share rejected by the fixed-horizon z test (the report's statsmodels test)
   at the planned end — should be 5 % (± 2 points holds at 4 binomial SEs with 2,000). 
   ``sequential_false_positive_rate``: share whose always-valid mSPRT p-value (mixture tau = the 10 % MDE)
   went under 5 % at *any* of the daily looks — should stay under 5 %. ``peeking_false_positive_rate`` is what
   reading the fixed-horizon p-value daily would have done instead.

``python -m bench.experiments [--nulls N] [--seed S]`` prints the JSON; ``skuvid bench experiments --json``.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

import numpy as np
import orjson

from experiments.aggregate import Aggregator
from experiments.report import analyse
from experiments.sequential import always_valid_p
from experiments.simulate import SimulationSpec, simulate_daily_conversions, simulate_events
from experiments.stats import proportion_p_values, relative_uplift_arrays
from schemas.engagement import Arm, Experiment, Metric

CONTROL_RATE, VIDEO_RATE = 0.153, 0.189
USERS_PER_DAY, DAYS = 2_000, 14
ALPHA, MDE = 0.05, 0.10

STUDY = Experiment(
    experiment_id="bench-video-atc",
    description="The study's add-to-cart case: 15.3 % -> 18.9 %.",
    arms=[Arm(arm_id="control", variant_id="none", weight=0.5), Arm(arm_id="video", variant_id="daily-a", weight=0.5)],
    starts_at=datetime(2026, 12, 1, tzinfo=UTC),
    ends_at=datetime(2026, 12, 15, tzinfo=UTC),
    primary_metric=Metric.ADD_TO_CART,
    minimum_detectable_effect=MDE,
    alpha=ALPHA,
)


def study_case(seed: int, users_per_day: int = USERS_PER_DAY, days: int = DAYS) -> dict:
    spec = SimulationSpec(STUDY, users=users_per_day * days, days=days, control_add_to_cart=CONTROL_RATE,
                          add_to_cart={"video": VIDEO_RATE}, duplicate_rate=0.01, seed=seed)
    events = simulate_events(spec)
    aggregator = Aggregator().add_all(events)
    result = analyse(STUDY, aggregator.totals(), source="bench").result("video", Metric.ADD_TO_CART)
    rel = result.fixed.relative
    return {
        "true_uplift": round(spec.true_uplift("video"), 4),
        "estimated_uplift": round(rel.value, 4),
        "ci_low": round(rel.ci_low, 4),
        "ci_high": round(rel.ci_high, 4),
        "p_value": result.fixed.absolute.p_value,
        "cuped_variance_reduction": round(result.cuped.variance_reduction, 4) if result.cuped else None,
        "users": result.fixed.n_control + result.fixed.n_treatment,
        "events": len(events),
        "duplicates_skipped": aggregator.duplicates,
    }


def null_rates(experiments: int, seed: int, users_per_day: int = USERS_PER_DAY, days: int = DAYS) -> dict:
    """False-positive rates over ``experiments`` A/A tests, each looked at once per day."""
    daily = simulate_daily_conversions(experiments, days, users_per_day, CONTROL_RATE, CONTROL_RATE, seed=seed)
    n_t, x_t, n_c, x_c = daily.n_treatment, daily.x_treatment, daily.n_control, daily.x_control
    daily_p = proportion_p_values(x_t, n_t, x_c, n_c)  # shape (experiments, days)
    p_t, p_c = x_t / n_t, x_c / n_c
    rel, var = relative_uplift_arrays(p_t, p_t * (1 - p_t) / n_t, p_c, p_c * (1 - p_c) / n_c)
    sequential_p = always_valid_p(rel, var, MDE)[:, -1]
    return {
        "null_false_positive_rate": round(float(np.mean(daily_p[:, -1] < ALPHA)), 4),
        "sequential_false_positive_rate": round(float(np.mean(sequential_p < ALPHA)), 4),
        "peeking_false_positive_rate": round(float(np.mean((daily_p < ALPHA).any(axis=1))), 4),
        "null_experiments": experiments,
    }


def run(null_experiments: int = 2_000, seed: int = 0) -> dict:
    if null_experiments < 200:
        raise ValueError(f"null_experiments must be at least 200, not {null_experiments}")
    start = time.perf_counter()
    study = study_case(seed)
    study_s = time.perf_counter() - start
    nulls = null_rates(null_experiments, seed + 1)
    return {
        **{k: study[k] for k in ("true_uplift", "estimated_uplift", "ci_low", "ci_high")},
        **{k: nulls[k] for k in ("null_false_positive_rate", "sequential_false_positive_rate")},
        "cuped_variance_reduction": study["cuped_variance_reduction"],
        "peeking_false_positive_rate": nulls["peeking_false_positive_rate"],
        "null_experiments": null_experiments,
        "users_per_day": USERS_PER_DAY,
        "days": DAYS,
        "study_users": study["users"],
        "study_events": study["events"],
        "study_s": round(study_s, 2),
        "nulls_s": round(time.perf_counter() - start - study_s, 2),
        "seed": seed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nulls", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(orjson.dumps(run(args.nulls, args.seed)).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
