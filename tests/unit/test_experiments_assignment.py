"""The assignment hash is the documented contract: checked-in vectors, boundaries, uniformity, independence."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest
from scipy import stats

from experiments.assignment import arm_for_bucket, assign, assign_many, bucket
from schemas.engagement import Arm, Experiment

VECTORS = orjson.loads((Path(__file__).parents[1] / "data" / "assignment_vectors.json").read_bytes())


def experiment(experiment_id: str, weights: list[tuple[str, float]]) -> Experiment:
    arms = [Arm(arm_id=a, variant_id="none" if i == 0 else f"v-{a}", weight=w) for i, (a, w) in enumerate(weights)]
    return Experiment(experiment_id=experiment_id, arms=arms, starts_at=datetime(2026, 12, 1, tzinfo=UTC),
                      ends_at=datetime(2026, 12, 15, tzinfo=UTC))


def test_the_vector_file_covers_the_cases_a_port_gets_wrong():
    vectors = VECTORS["vectors"]
    assert len(vectors) >= 50
    assert any(v["arm"] is None for v in vectors), "partial traffic (not enrolled)"
    assert any(len(v["arms"]) == 10 for v in vectors), "weights whose double sum is not exactly 1"
    assert any(not v["user_id"].isascii() for v in vectors), "UTF-8 user ids"
    assert any(v["user_id"] != v["user_id"].strip() for v in vectors), "no trimming"


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: f"{v['experiment_id']}:{v['user_id'][:12]}")
def test_vectors(vector):
    message = f"{vector['experiment_id']}:{vector['user_id']}".encode("utf-8")
    first8 = hashlib.sha256(message).digest()[:8]
    assert first8.hex() == vector["sha256_first8_hex"]
    # independent of experiments.assignment: integer arithmetic, then one exact division
    assert (int(first8.hex(), 16) >> 11) / 2**53 == vector["bucket"] == bucket(vector["experiment_id"],
                                                                                 vector["user_id"])
    exp = experiment(vector["experiment_id"], [(a["arm_id"], a["weight"]) for a in vector["arms"]])
    assert assign(exp, vector["user_id"]) == vector["arm"]


def test_boundaries_and_the_full_traffic_rule():
    ten = [(f"a{i}", 0.1) for i in range(10)]
    assert sum(w for _, w in ten) < 1.0  # 0.9999999999999999 in doubles
    largest = (2**53 - 1) / 2**53
    assert arm_for_bucket(ten, largest) == "a9"  # not dropped by rounding: weights sum to 1
    assert arm_for_bucket([("a", 0.5), ("b", 0.5)], 0.5) == "b"  # bucket < cum is strict
    assert arm_for_bucket([("a", 0.5), ("b", 0.5)], 0.0) == "a"
    partial = [("control", 0.2), ("video", 0.2)]
    assert arm_for_bucket(partial, 0.3999) == "video"
    assert arm_for_bucket(partial, 0.4) is None
    assert arm_for_bucket(partial, largest) is None


def test_assign_many_agrees_with_assign():
    exp = experiment("exp-video-styles", [("control", 0.2), ("daily", 0.15), ("promo", 0.15)])
    users = [f"user-{i}" for i in range(3000)]
    index = assign_many(exp, users)
    names = [exp.arms[i].arm_id if i >= 0 else None for i in index]
    assert names == [assign(exp, u) for u in users]


def test_split_is_uniform_and_independent_between_experiments():
    users = [f"u-{i:06d}" for i in range(20_000)]
    a = assign_many(experiment("exp-a", [("control", 0.5), ("video", 0.5)]), users)
    b = assign_many(experiment("exp-b", [("control", 0.2), ("x", 0.3), ("y", 0.5)]), users)
    assert stats.chisquare(np.bincount(a), [10_000, 10_000]).pvalue > 0.001
    assert stats.chisquare(np.bincount(b), [4_000, 6_000, 10_000]).pvalue > 0.001
    crosstab = np.array([[np.sum((a == i) & (b == j)) for j in range(3)] for i in range(2)])
    assert stats.chi2_contingency(crosstab).pvalue > 0.001  # being in video in exp-a says nothing about exp-b
