"""Always-valid inference: the mixture sequential probability ratio test (mSPRT), for daily looks.

A fixed-horizon p-value checked every day and acted on the first time it dips under 5 % rejects a true null
far more often than 5 % (with 14 looks, about 20 %). The mSPRT of Johari, Koomen, Pekelis & Walsh,
"Always Valid Inference: Continuous Monitoring of A/B Tests" (Operations Research 70(3), 2022; the method
behind Optimizely's stats engine) gives p-values and confidence intervals that stay valid at *every* look.

For a difference estimate ``d`` with variance ``V`` (asymptotically normal) and a normal mixture
``N(0, tau²)`` over the true difference, the likelihood ratio against ``H0: difference = 0`` is

    Λ = sqrt(V / (V + tau²)) · exp(tau² d² / (2 V (V + tau²)))

and, over the looks ``1..n``, the always-valid p-value is ``p_n = min(1, min_k 1 / Λ_k)``; by Ville's
inequality ``P(p_n <= alpha for some n) <= alpha`` under the null. Inverting the test gives the always-valid
CI ``d ± sqrt(V (V + tau²) / tau² · (log((V + tau²) / V) + 2 log(1 / alpha)))``, intersected over the
looks. No library in the dependency set implements the mSPRT, so these two formulas live here, vectorised
over experiments with numpy; ``tests/unit/test_experiments_sequential.py`` checks the false-positive rate.

``tau`` is a prior guess of the effect size; any value keeps the guarantee, a value near the effects that
matter makes the test decide sooner. skuvid uses the declared minimum detectable effect in absolute units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SequentialResult:
    """The always-valid p-value and CI of the absolute difference after the last look."""

    p_value: float
    ci_low: float
    ci_high: float
    looks: int
    tau: float


def log_likelihood_ratio(diff, var, tau):
    """``log Λ`` of the mSPRT for each look (arrays broadcast); ``var <= 0`` or NaN gives ``-inf`` (no evidence)."""
    diff, var = np.asarray(diff, dtype=float), np.asarray(var, dtype=float)
    tau2 = float(tau) ** 2
    ok = np.isfinite(diff) & np.isfinite(var) & (var > 0)
    v = np.where(ok, var, 1.0)
    d = np.where(ok, diff, 0.0)
    llr = 0.5 * np.log(v / (v + tau2)) + tau2 * d * d / (2 * v * (v + tau2))
    return np.where(ok, llr, -np.inf)


def always_valid_p(diff, var, tau) -> np.ndarray:
    """Running always-valid p-values along the last axis (the looks): ``min(1, min_k exp(-log Λ_k))``."""
    p = np.minimum(1.0, np.exp(-log_likelihood_ratio(diff, var, tau)))
    return np.minimum.accumulate(p, axis=-1)


def always_valid_ci(diff, var, tau, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Running always-valid ``(low, high)`` along the last axis: each look's interval intersected with earlier ones."""
    diff, var = np.asarray(diff, dtype=float), np.asarray(var, dtype=float)
    tau2 = float(tau) ** 2
    ok = np.isfinite(diff) & np.isfinite(var) & (var > 0)
    v = np.where(ok, var, 1.0)
    half = np.sqrt(v * (v + tau2) / tau2 * (np.log((v + tau2) / v) + 2 * np.log(1 / alpha)))
    low = np.where(ok, diff - half, -np.inf)
    high = np.where(ok, diff + half, np.inf)
    return np.maximum.accumulate(low, axis=-1), np.minimum.accumulate(high, axis=-1)


def msprt(diffs: list[float], variances: list[float], tau: float, alpha: float = 0.05) -> SequentialResult:
    """The mSPRT over one experiment's looks (cumulative difference and its variance at each look, in order)."""
    if not diffs or not tau > 0:
        return SequentialResult(float("nan"), float("nan"), float("nan"), len(diffs), tau)
    p = always_valid_p(diffs, variances, tau)
    low, high = always_valid_ci(diffs, variances, tau, alpha)
    return SequentialResult(float(p[-1]), float(low[-1]), float(high[-1]), len(diffs), tau)
