"""mSPRT: daily looks keep the false-positive rate under alpha where peeking at a fixed test does not."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.sequential import always_valid_ci, always_valid_p, log_likelihood_ratio, msprt
from experiments.simulate import simulate_daily_conversions
from experiments.stats import proportion_p_values, relative_uplift_arrays

P_CONTROL, MDE = 0.153, 0.10


def daily_relative(p_treatment: float, experiments: int, seed: int, days: int = 28, users_per_day: int = 1500):
    d = simulate_daily_conversions(experiments, days, users_per_day, P_CONTROL, p_treatment, seed=seed)
    p_t, p_c = d.x_treatment / d.n_treatment, d.x_control / d.n_control
    rel, var = relative_uplift_arrays(p_t, p_t * (1 - p_t) / d.n_treatment, p_c, p_c * (1 - p_c) / d.n_control)
    return d, rel, var


def test_null_false_positive_rate_with_daily_looks():
    d, rel, var = daily_relative(P_CONTROL, experiments=3000, seed=11)
    sequential = np.mean(always_valid_p(rel, var, MDE)[:, -1] < 0.05)
    peeking = np.mean((proportion_p_values(d.x_treatment, d.n_treatment, d.x_control, d.n_control) < 0.05).any(axis=1))
    assert sequential < 0.05
    assert peeking > 0.15  # what the mSPRT protects against: a fixed test read daily rejects far too often


def test_always_valid_ci_covers_the_truth_at_every_look_simultaneously():
    truth = 0.189 / P_CONTROL - 1
    _, rel, var = daily_relative(0.189, experiments=1000, seed=12)
    low, high = always_valid_ci(rel, var, MDE, alpha=0.05)
    always_covered = np.all((low <= truth) & (truth <= high), axis=1)
    assert np.mean(always_covered) >= 0.95
    assert np.all(np.diff(high - low, axis=1) <= 1e-12)  # running intersection: never widens


def test_a_real_effect_is_found():
    _, rel, var = daily_relative(0.189, experiments=500, seed=13)
    p = always_valid_p(rel, var, MDE)
    assert np.all(np.diff(p, axis=1) <= 0)  # a running minimum
    assert np.mean(p[:, -1] < 0.05) > 0.95  # 28 days at 1,500 users a day detect +23.5 %


def test_no_evidence_without_a_variance():
    assert np.isneginf(log_likelihood_ratio([0.1, np.nan], [0.0, 1.0], 0.1)).all()
    result = msprt([0.2, 0.1], [0.0, np.nan], tau=0.1)
    assert result.p_value == 1.0 and result.looks == 2
    assert np.isnan(msprt([], [], 0.1).p_value)
    p = always_valid_p([0.0], [1e-4], 0.1)
    assert p[0] == pytest.approx(min(1.0, np.sqrt((1e-4 + 0.01) / 1e-4)))  # 1/Λ at d = 0, capped at 1
