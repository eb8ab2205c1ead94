"""CUPED: less variance from pre-experiment covariates (Deng, Xu, Kohavi & Walker, WSDM 2013).

Each user's metric ``y`` is replaced by ``y - theta (x - mean(x))``, where ``x`` is the same user's behaviour
before the experiment (``PrePeriod``) and ``theta = cov(x, y) / var(x)`` over both arms pooled. ``x`` cannot
be moved by the treatment, so the adjusted difference estimates the same effect, with variance reduced by
about ``corr(x, y)²``. Users without a covariate count with ``x = 0``: that keeps the estimate unbiased and
only weakens the reduction.

Everything comes from the sums in ``MetricSums`` (``Σx, Σx², Σxy``), so the adjustment costs nothing at
query time; the adjusted arms are compared with the same Welch test as any mean (``stats.compare_means``).
"""

from __future__ import annotations

from dataclasses import dataclass

from experiments.aggregate import MetricSums
from experiments.stats import Comparison, compare_means
from schemas.engagement import Metric


@dataclass(frozen=True)
class CupedResult:
    comparison: Comparison  # Welch on the adjusted per-user values (method "cuped")
    theta: float
    variance_reduction: float  # 1 - Var(adjusted difference) / Var(unadjusted difference)


def _cov(n: int, sum_a: float, sum_b: float, sum_ab: float) -> float:
    return (sum_ab - sum_a * sum_b / n) / (n - 1)


def adjusted(s: MetricSums, theta: float, pooled_mean_x: float) -> MetricSums:
    """The arm's sums for ``y - theta (x - pooled_mean_x)``: same mean/variance as adjusting every user."""
    n = s.n
    mean = (s.y - theta * (s.x - n * pooled_mean_x)) / n
    var = _cov(n, s.y, s.y, s.y2) - 2 * theta * _cov(n, s.x, s.y, s.xy) + theta**2 * _cov(n, s.x, s.x, s.x2)
    var = max(var, 0.0)
    return MetricSums(n=n, y=n * mean, y2=(n - 1) * var + n * mean * mean)


def cuped(metric: Metric, t: MetricSums, c: MetricSums, alpha: float = 0.05) -> CupedResult | None:
    """The CUPED comparison, or None when there is no usable covariate (none present, or it never varies)."""
    if t.n < 2 or c.n < 2 or (t.n_cov == 0 and c.n_cov == 0):
        return None
    n = t.n + c.n
    sx, sy, sx2, sxy = t.x + c.x, t.y + c.y, t.x2 + c.x2, t.xy + c.xy
    var_x = _cov(n, sx, sx, sx2)
    if var_x <= 0:
        return None
    theta = _cov(n, sx, sy, sxy) / var_x
    mean_x = sx / n
    comparison = compare_means(metric, adjusted(t, theta, mean_x), adjusted(c, theta, mean_x), alpha, "cuped")
    plain = t.var / t.n + c.var / c.n
    reduction = 1 - comparison.var_diff / plain if plain > 0 else float("nan")
    return CupedResult(comparison, theta, reduction)
