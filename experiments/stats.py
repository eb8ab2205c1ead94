"""Fixed-horizon statistics of one treatment arm against control, from per-user sufficient statistics.

Every test is a library's: Welch's t (``scipy.stats.ttest_ind_from_stats``) for mean dwell, the two-proportion
z test (``statsmodels`` ``test_proportions_2indep`` / ``confint_proportions_2indep``, Wald variance, so a
95 % CI excludes 0 exactly when p < 0.05) for add-to-cart and order conversion, the delta method
(``statsmodels`` ``NonlinearDeltaCov``) for the relative uplift ``treatment / control - 1``, Pearson's
chi-square (``scipy.stats.chisquare``) for sample-ratio mismatch, and ``statsmodels`` power classes for the
minimum detectable effect. Only the Welch interval is assembled here (scipy's ``t`` quantile at the
Welch–Satterthwaite degrees of freedom), because scipy builds it only from raw samples; a test checks it
against ``scipy.stats.ttest_ind(...).confidence_interval()``.

"Fixed horizon" means: valid when looked at once, at the planned end. For daily looks use ``sequential``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps
from statsmodels.stats._delta_method import NonlinearDeltaCov
from statsmodels.stats.power import NormalIndPower, TTestIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_effectsize,
    test_proportions_2indep,
)

from experiments.aggregate import MetricSums
from schemas.engagement import Metric

SRM_ALPHA = 0.001  # the usual SRM threshold: a real split problem, not the 1-in-20 chance of alpha = 0.05
NAN = float("nan")


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its two-sided confidence interval and the p-value of "no difference"."""

    value: float
    ci_low: float
    ci_high: float
    p_value: float
    se: float = NAN  # standard error of ``value`` (asymptotic), for the sequential test

    @classmethod
    def unknown(cls) -> Estimate:
        return cls(NAN, NAN, NAN, NAN)

    def covers(self, value: float) -> bool:
        return self.ci_low <= value <= self.ci_high


@dataclass(frozen=True)
class Comparison:
    """Treatment vs control on one metric: means, absolute difference and relative uplift."""

    metric: Metric
    method: str  # "welch", "z" or "cuped" (Welch on CUPED-adjusted values)
    control: float  # control mean (rate for conversions)
    treatment: float
    n_control: int
    n_treatment: int
    absolute: Estimate  # treatment - control
    relative: Estimate  # treatment / control - 1 (delta method)
    var_diff: float  # variance of the absolute difference estimate (for CUPED's variance reduction)


def _welch_df(var_mean_t: float, n_t: int, var_mean_c: float, n_c: int) -> float:
    """Welch–Satterthwaite degrees of freedom; ``var_mean_*`` is ``s² / n``."""
    denominator = var_mean_t**2 / (n_t - 1) + var_mean_c**2 / (n_c - 1)
    return (var_mean_t + var_mean_c) ** 2 / denominator if denominator > 0 else math.inf


def relative_uplift(mean_t: float, var_mean_t: float, mean_c: float, var_mean_c: float, alpha: float) -> Estimate:
    """``mean_t / mean_c - 1`` with its delta-method CI and Wald p-value (independent arms, normal approx)."""
    if not (mean_c > 0 and math.isfinite(var_mean_t) and math.isfinite(var_mean_c)):
        return Estimate.unknown()
    delta = NonlinearDeltaCov(
        lambda p: np.array([p[0] / p[1] - 1.0]),
        np.array([mean_t, mean_c]),
        np.diag([var_mean_t, var_mean_c]),
        deriv=lambda p: np.array([[1.0 / p[1], -p[0] / p[1] ** 2]]),
    )
    value = float(delta.predicted()[0])
    se = float(delta.se_vectorized()[0])
    if not se > 0:  # no spread at all (e.g. no conversions in either arm): a value, no inference
        return Estimate(value, value, value, NAN, 0.0)
    (low, high), = delta.conf_int(alpha=alpha)
    _, p_value = delta.wald_test(np.array([0.0]))
    return Estimate(value, float(low), float(high), float(p_value), se)


def relative_uplift_arrays(mean_t, var_mean_t, mean_c, var_mean_c) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised ``relative_uplift``: estimate and delta-method variance (same gradient) over arrays; NaN where
    the control mean is 0. ``tests/unit/test_experiments_stats.py`` checks it against ``NonlinearDeltaCov``."""
    mean_t, mean_c = np.asarray(mean_t, dtype=float), np.asarray(mean_c, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = mean_c > 0
        c = np.where(ok, mean_c, 1.0)
        value = np.where(ok, mean_t / c - 1.0, np.nan)
        var = np.where(ok, var_mean_t / c**2 + mean_t**2 * var_mean_c / c**4, np.nan)
    return value, var


def compare_means(metric: Metric, t: MetricSums, c: MetricSums, alpha: float, method: str = "welch") -> Comparison:
    """Welch's t test of the difference in per-user means (unequal variances)."""
    if t.n < 2 or c.n < 2:
        return _unknown(metric, method, t, c)
    vm_t, vm_c = t.var / t.n, c.var / c.n
    diff = t.mean - c.mean
    var_diff = vm_t + vm_c
    if var_diff <= 0:
        absolute = Estimate(diff, diff, diff, NAN)
    else:
        result = sps.ttest_ind_from_stats(t.mean, math.sqrt(t.var), t.n, c.mean, math.sqrt(c.var), c.n,
                                          equal_var=False)
        half = float(sps.t.ppf(1 - alpha / 2, _welch_df(vm_t, t.n, vm_c, c.n))) * math.sqrt(var_diff)
        absolute = Estimate(diff, diff - half, diff + half, float(result.pvalue), math.sqrt(var_diff))
    relative = relative_uplift(t.mean, vm_t, c.mean, vm_c, alpha)
    return Comparison(metric, method, c.mean, t.mean, c.n, t.n, absolute, relative, var_diff)


def compare_proportions(metric: Metric, t: MetricSums, c: MetricSums, alpha: float) -> Comparison:
    """Two-proportion z test (Wald variance) of per-user conversion ``y / n``."""
    if t.n < 1 or c.n < 1:
        return _unknown(metric, "z", t, c)
    p_t, p_c = t.y / t.n, c.y / c.n
    vm_t, vm_c = p_t * (1 - p_t) / t.n, p_c * (1 - p_c) / c.n
    if vm_t + vm_c <= 0:
        absolute = Estimate(p_t - p_c, p_t - p_c, p_t - p_c, NAN)
    else:
        test = test_proportions_2indep(t.y, t.n, c.y, c.n, method="wald", compare="diff")
        low, high = confint_proportions_2indep(t.y, t.n, c.y, c.n, method="wald", compare="diff", alpha=alpha)
        absolute = Estimate(float(test.diff), float(low), float(high), float(test.pvalue), math.sqrt(vm_t + vm_c))
    relative = relative_uplift(p_t, vm_t, p_c, vm_c, alpha)
    return Comparison(metric, "z", p_c, p_t, c.n, t.n, absolute, relative, vm_t + vm_c)


def compare(metric: Metric, t: MetricSums, c: MetricSums, alpha: float = 0.05) -> Comparison:
    """The fixed-horizon test that fits ``metric``: Welch for dwell, two-proportion z for conversions."""
    if metric is Metric.DWELL:
        return compare_means(metric, t, c, alpha)
    return compare_proportions(metric, t, c, alpha)


def proportion_p_values(x_t, n_t, x_c, n_c) -> np.ndarray:
    """Vectorised p-values of ``compare_proportions`` (same statsmodels test) over arrays of experiments."""
    return np.asarray(test_proportions_2indep(x_t, n_t, x_c, n_c, method="wald", compare="diff").pvalue)


def _unknown(metric: Metric, method: str, t: MetricSums, c: MetricSums) -> Comparison:
    return Comparison(metric, method, c.mean, t.mean, c.n, t.n, Estimate.unknown(), Estimate.unknown(), NAN)


@dataclass(frozen=True)
class SampleRatio:
    """Observed vs declared split of users over the arms (Pearson chi-square goodness of fit)."""

    observed: dict[str, int]
    expected: dict[str, float]
    chi2: float
    p_value: float
    mismatch: bool  # p < SRM_ALPHA: the assignment or the logging is broken; do not trust the comparisons


def sample_ratio(observed: dict[str, int], weights: dict[str, float], threshold: float = SRM_ALPHA) -> SampleRatio:
    """Test that users fell into the arms in the declared proportions (weights need not sum to 1)."""
    arms = list(weights)
    counts = np.array([observed.get(a, 0) for a in arms], dtype=float)
    total = counts.sum()
    shares = np.array([weights[a] for a in arms]) / sum(weights.values())
    expected = shares * total
    if total == 0:
        return SampleRatio(dict(observed), dict(zip(arms, expected.tolist())), NAN, NAN, False)
    result = sps.chisquare(counts, expected)
    return SampleRatio(
        observed={a: int(c) for a, c in zip(arms, counts)},
        expected=dict(zip(arms, expected.tolist())),
        chi2=float(result.statistic),
        p_value=float(result.pvalue),
        mismatch=bool(result.pvalue < threshold),
    )


@dataclass(frozen=True)
class PowerCheck:
    """Whether the sample can detect the declared minimum detectable effect (relative) at the wanted power."""

    mde: float  # the declared relative MDE
    required_control: float  # users needed in control (treatment: times the observed ratio)
    required_treatment: float
    achieved_mde: float  # the relative effect detectable with the users there are
    underpowered: bool


def power_check(metric: Metric, t: MetricSums, c: MetricSums, mde: float, alpha: float, power: float) -> PowerCheck:
    """Sample size for ``mde`` and the MDE of the current sample (two-sided, ``statsmodels`` power solvers).

    Conversions: Cohen's h with ``NormalIndPower``; dwell: Cohen's d (pooled SD) with ``TTestIndPower``.
    Needs the control mean and spread, so it is ``nan`` (and not flagged) until both arms have users.
    """
    unknown = PowerCheck(mde, NAN, NAN, NAN, False)
    if t.n < 2 or c.n < 2 or not c.mean > 0:
        return unknown
    ratio = t.n / c.n
    if metric is Metric.DWELL:
        sd = math.sqrt(((t.n - 1) * t.var + (c.n - 1) * c.var) / (t.n + c.n - 2))
        if sd <= 0:
            return unknown
        solver = TTestIndPower()
        effect = mde * c.mean / sd
        achieved = solver.solve_power(effect_size=None, nobs1=c.n, alpha=alpha, power=power, ratio=ratio)
        achieved_mde = float(achieved) * sd / c.mean
    else:
        if not c.mean < 1:
            return unknown
        solver = NormalIndPower()
        target = c.mean * (1 + mde)
        if target >= 1:
            return unknown
        effect = abs(float(proportion_effectsize(target, c.mean)))
        h = float(solver.solve_power(effect_size=None, nobs1=c.n, alpha=alpha, power=power, ratio=ratio))
        achieved_rate = math.sin(min(math.pi / 2, math.asin(math.sqrt(c.mean)) + h / 2)) ** 2
        achieved_mde = achieved_rate / c.mean - 1
    required_c = float(solver.solve_power(effect_size=effect, nobs1=None, alpha=alpha, power=power, ratio=ratio))
    required_t = required_c * ratio
    return PowerCheck(mde, required_c, required_t, achieved_mde, bool(c.n < required_c or t.n < required_t))
