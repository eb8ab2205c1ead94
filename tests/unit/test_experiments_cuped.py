"""CUPED from sums equals CUPED on raw per-user data (theta from statsmodels OLS), and cuts variance when it should."""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm

from experiments.aggregate import MetricSums
from experiments.cuped import cuped
from schemas.engagement import Metric


def sums(y: np.ndarray, x: np.ndarray) -> MetricSums:
    return MetricSums(n=len(y), y=float(y.sum()), y2=float(y @ y), x=float(x.sum()), x2=float(x @ x),
                      xy=float(x @ y), n_cov=len(y))


def arms(rng, n: int, effect: float, rho_strength: float):
    out = []
    for shift in (effect, 0.0):
        x = rng.gamma(2.0, 10.0, size=n)
        y = rho_strength * x + rng.normal(0, 10, size=n) + shift
        out.append((y, x))
    return out


def test_sums_give_the_same_adjustment_as_raw_data():
    rng = np.random.default_rng(5)
    (yt, xt), (yc, xc) = arms(rng, 3000, effect=1.5, rho_strength=1.0)
    result = cuped(Metric.DWELL, sums(yt, xt), sums(yc, xc))
    x_all, y_all = np.concatenate([xt, xc]), np.concatenate([yt, yc])
    theta = sm.OLS(y_all, sm.add_constant(x_all)).fit().params[1]
    assert result.theta == pytest.approx(theta, rel=1e-9)
    adjust = lambda y, x: y - theta * (x - x_all.mean())  # noqa: E731
    at, ac = adjust(yt, xt), adjust(yc, xc)
    assert result.comparison.absolute.value == pytest.approx(at.mean() - ac.mean(), rel=1e-9)
    se = np.sqrt(at.var(ddof=1) / len(at) + ac.var(ddof=1) / len(ac))
    assert result.comparison.absolute.se == pytest.approx(se, rel=1e-9)
    assert result.comparison.method == "cuped"


def test_variance_reduction_follows_the_correlation():
    rng = np.random.default_rng(6)
    strong = cuped(Metric.DWELL, *(sums(y, x) for y, x in arms(rng, 4000, 1.0, 1.0)))
    none = cuped(Metric.DWELL, *(sums(y, x) for y, x in arms(rng, 4000, 1.0, 0.0)))
    assert strong.variance_reduction > 0.5  # corr² = 200 / (200 + 100) ≈ 0.67
    assert abs(none.variance_reduction) < 0.01
    assert strong.comparison.absolute.covers(1.0) and none.comparison.absolute.covers(1.0)


def test_no_covariate_no_cuped():
    y = np.ones(10)
    plain = MetricSums(10, 10.0, 10.0)
    assert cuped(Metric.ADD_TO_CART, plain, plain) is None
    constant = sums(y, np.full(10, 3.0))
    assert cuped(Metric.ADD_TO_CART, constant, constant) is None
