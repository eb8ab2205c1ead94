"""Fixed-horizon statistics from sums agree with the libraries on raw data, and their CIs cover the truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats import proportion as smp

from experiments.aggregate import MetricSums
from experiments.stats import (
    compare,
    compare_proportions,
    power_check,
    proportion_p_values,
    relative_uplift,
    relative_uplift_arrays,
    sample_ratio,
)
from schemas.engagement import Metric


def sums(y: np.ndarray) -> MetricSums:
    return MetricSums(n=len(y), y=float(y.sum()), y2=float((y * y).sum()))


def test_welch_from_sums_matches_scipy_on_raw_samples():
    rng = np.random.default_rng(1)
    t, c = rng.gamma(2.0, 22.0, size=900), rng.gamma(1.5, 26.0, size=1300)
    result = compare(Metric.DWELL, sums(t), sums(c))
    raw = sps.ttest_ind(t, c, equal_var=False)
    ci = raw.confidence_interval(0.95)
    assert result.method == "welch"
    assert result.absolute.value == pytest.approx(t.mean() - c.mean(), rel=1e-12)
    assert result.absolute.p_value == pytest.approx(raw.pvalue, rel=1e-9)
    assert (result.absolute.ci_low, result.absolute.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_two_proportion_z_test_matches_statsmodels_and_its_ci_agrees_with_its_p():
    result = compare(Metric.ADD_TO_CART, MetricSums(14000, 2646, 2646), MetricSums(14000, 2142, 2142))
    ref = smp.test_proportions_2indep(2646, 14000, 2142, 14000, method="wald", compare="diff")
    assert result.absolute.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    assert result.treatment == pytest.approx(0.189) and result.control == pytest.approx(0.153)
    rng = np.random.default_rng(2)
    for _ in range(200):
        n_t, n_c = rng.integers(200, 3000, size=2)
        x_t, x_c = rng.binomial(n_t, 0.15), rng.binomial(n_c, 0.15)
        r = compare_proportions(Metric.ORDER, MetricSums(n_t, x_t, x_t), MetricSums(n_c, x_c, x_c), 0.05)
        assert (r.absolute.p_value < 0.05) == (not r.absolute.covers(0.0)), (n_t, x_t, n_c, x_c)


def test_vectorised_p_values_and_relative_uplift_equal_the_scalar_ones():
    x_t, n_t, x_c, n_c = np.array([30, 2646, 0]), np.array([200, 14000, 50]), np.array([25, 2142, 3]), np.array(
        [210, 14000, 60])
    vector = proportion_p_values(x_t, n_t, x_c, n_c)
    for i in range(3):
        scalar = compare_proportions(Metric.ORDER, MetricSums(n_t[i], x_t[i], x_t[i]),
                                     MetricSums(n_c[i], x_c[i], x_c[i]), 0.05)
        assert vector[i] == pytest.approx(scalar.absolute.p_value, rel=1e-12)
    est = relative_uplift(0.189, 1.1e-5, 0.153, 0.9e-5, 0.05)
    value, var = relative_uplift_arrays(np.array([0.189]), 1.1e-5, np.array([0.153]), 0.9e-5)
    assert (value[0], math.sqrt(var[0])) == pytest.approx((est.value, est.se), rel=1e-9)
    assert math.isnan(relative_uplift_arrays(np.array([0.1]), 1e-4, np.array([0.0]), 1e-4)[0][0])


def test_relative_uplift_ci_covers_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    p_c, p_t, n = 0.153, 0.189, 4000
    covered = 0
    trials = 400
    for _ in range(trials):
        x_t, x_c = rng.binomial(n, p_t), rng.binomial(n, p_c)
        r = compare(Metric.ADD_TO_CART, MetricSums(n, x_t, x_t), MetricSums(n, x_c, x_c))
        covered += r.relative.covers(p_t / p_c - 1)
    assert 0.92 <= covered / trials <= 0.98


def test_degenerate_inputs_give_nan_not_errors():
    empty = MetricSums(0, 0, 0)
    r = compare(Metric.DWELL, empty, empty)
    assert math.isnan(r.absolute.value) and math.isnan(r.relative.p_value)
    r = compare(Metric.ADD_TO_CART, MetricSums(100, 0, 0), MetricSums(100, 0, 0))
    assert r.absolute.value == 0 and math.isnan(r.absolute.p_value) and math.isnan(r.relative.value)


def test_sample_ratio_mismatch():
    assert not sample_ratio({"control": 10_050, "video": 9_950}, {"control": 0.5, "video": 0.5}).mismatch
    bad = sample_ratio({"control": 10_400, "video": 9_600}, {"control": 0.5, "video": 0.5})
    assert bad.mismatch and bad.p_value < 1e-6
    partial = sample_ratio({"c": 2000, "a": 1500, "b": 1500}, {"c": 0.2, "a": 0.15, "b": 0.15})
    assert not partial.mismatch and partial.expected == pytest.approx({"c": 2000, "a": 1500, "b": 1500})


def test_power_check_matches_the_textbook_sample_size():
    control = MetricSums(1000, 153, 153)
    check = power_check(Metric.ADD_TO_CART, MetricSums(1000, 189, 189), control, mde=0.189 / 0.153 - 1,
                        alpha=0.05, power=0.8)
    textbook = (sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) ** 2 * (0.153 * 0.847 + 0.189 * 0.811) / 0.036**2
    assert check.required_control == pytest.approx(textbook, rel=0.03)  # Cohen's h vs the Wald formula
    assert check.underpowered  # 1000 < ~1711
    big = power_check(Metric.ADD_TO_CART, MetricSums(20000, 3780, 3780), MetricSums(20000, 3060, 3060), 0.1, 0.05,
                      0.8)
    assert not big.underpowered and 0.05 < big.achieved_mde < 0.1
    rng = np.random.default_rng(4)
    dwell = power_check(Metric.DWELL, sums(rng.gamma(2, 20, 500)), sums(rng.gamma(2, 20, 500)), 0.1, 0.05, 0.8)
    assert dwell.underpowered and dwell.achieved_mde > 0.1
