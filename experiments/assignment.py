"""Deterministic assignment of a user to an experiment arm — the contract shared with the listing service.

The listing API decides which arm a user sees; skuvid's report checks the split (sample-ratio mismatch) and
the simulator generates traffic with the very same function. Any implementation, in any language, must
return the same arm for the same inputs; ``tests/data/assignment_vectors.json`` holds vectors to check one.

Algorithm (version 1)
---------------------
1. ``message = experiment_id + ":" + user_id``, encoded as UTF-8 (no normalisation, no trimming, case kept).
2. ``digest = SHA-256(message)``; ``u = `` the first 8 bytes of ``digest`` as an unsigned big-endian 64-bit int.
3. ``bucket = (u >> 11) / 2**53``: the top 53 bits as a fraction in ``[0, 1)``. Every 53-bit integer and its
   quotient by a power of two are exact IEEE-754 doubles, so this step has no rounding in any language
   (JavaScript: ``Number(BigInt.asUintN(64, u) >> 11n) / 2**53``).
4. Walk the arms **in declaration order**, keeping ``cum`` as a running IEEE-754 double sum of their weights
   (``cum = cum + weight``, left to right). The first arm with ``bucket < cum`` is the user's arm.
5. If no arm matched: when the weights sum to 1 (``|cum - 1| <= 1e-9``, so rounding in step 4 cannot drop
   a user) the **last** arm is the user's arm; otherwise (weights sum to less than 1 on purpose) the user is
   **not in the experiment** (``None``).

Changing an experiment's id, its arms' order or their weights reassigns users: declare a new experiment.
The hash of the experiment id makes assignments of different experiments independent of each other.
"""

from __future__ import annotations

import hashlib

import numpy as np

from schemas.engagement import Experiment

ALGORITHM = "sha256(experiment_id:user_id)[0:8] big-endian >> 11, / 2**53, cumulative weights in arm order"
FULL_TRAFFIC_TOLERANCE = 1e-9


def bucket(experiment_id: str, user_id: str) -> float:
    """The user's position in ``[0, 1)`` for this experiment (steps 1-3 above)."""
    digest = hashlib.sha256(f"{experiment_id}:{user_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / 2**53


def arm_for_bucket(weights: list[tuple[str, float]], position: float) -> str | None:
    """Steps 4-5: the arm whose cumulative-weight interval holds ``position``, or None (not enrolled)."""
    cum = 0.0
    for arm_id, weight in weights:
        cum += weight
        if position < cum:
            return arm_id
    if weights and abs(cum - 1.0) <= FULL_TRAFFIC_TOLERANCE:
        return weights[-1][0]
    return None


def assign(experiment: Experiment, user_id: str) -> str | None:
    """The arm id ``user_id`` sees in ``experiment``, or None when the user is outside its traffic."""
    weights = [(a.arm_id, a.weight) for a in experiment.arms]
    return arm_for_bucket(weights, bucket(experiment.experiment_id, user_id))


def assign_many(experiment: Experiment, user_ids: list[str]) -> np.ndarray:
    """Arm index (declaration order) per user, -1 when not enrolled; same rule as ``assign``, vectorised walk."""
    positions = np.array([bucket(experiment.experiment_id, u) for u in user_ids], dtype=np.float64)
    cum = np.cumsum([a.weight for a in experiment.arms])  # left-to-right double sums, as in step 4
    index = np.searchsorted(cum, positions, side="right")  # first arm with position < cum
    full = abs(cum[-1] - 1.0) <= FULL_TRAFFIC_TOLERANCE
    last = len(experiment.arms) - 1
    return np.where(index <= last, index, last if full else -1)
