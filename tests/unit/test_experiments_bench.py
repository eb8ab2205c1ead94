"""``skuvid bench experiments``: the study case is recovered and the false-positive rates are where they belong."""

from __future__ import annotations

import time

import pytest

from bench import run_named
from bench.experiments import null_rates, run
from skuvid.settings import Settings

KEYS = {"true_uplift", "estimated_uplift", "ci_low", "ci_high", "null_false_positive_rate",
        "sequential_false_positive_rate", "cuped_variance_reduction"}


@pytest.fixture(scope="module")
def result() -> dict:
    return run_named("experiments", Settings())


def test_reports_the_issue_keys(result):
    assert KEYS <= set(result)
    assert result["null_experiments"] >= 200


def test_true_uplift_inside_the_ci(result):
    assert result["true_uplift"] == pytest.approx(0.189 / 0.153 - 1, abs=1e-4)
    assert result["ci_low"] <= result["true_uplift"] <= result["ci_high"]
    assert result["ci_low"] > 0  # the study's effect is detected at this traffic


def test_false_positive_rates(result):
    assert abs(result["null_false_positive_rate"] - 0.05) <= 0.02
    assert result["sequential_false_positive_rate"] < 0.05
    assert result["peeking_false_positive_rate"] > 0.10  # what the sequential test is for


def test_cuped_reduces_variance_with_correlated_pre_period_data(result):
    assert result["cuped_variance_reduction"] > 0.05


def test_null_experiments_are_fast_and_refuse_too_few():
    start = time.process_time()
    rates = null_rates(200, seed=9)
    assert time.process_time() - start < 5  # "well under a minute on one core"
    assert 0 <= rates["null_false_positive_rate"] <= 0.15
    with pytest.raises(ValueError, match="at least 200"):
        run(null_experiments=100)
