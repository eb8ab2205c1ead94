"""Which of a SKU's variants a user sees: one deterministic rule that listing services can reproduce.

A SKU's serving group (its daily variants, or the variants of the promo in its window) is an experiment:

* experiment id: ``"<Settings.api_variant_experiment>:<group>"`` with group ``daily`` or the promo id, e.g.
  ``skuvid-variants:daily`` — the same for every SKU, so a user keeps the same arm letter across listings;
* arms: the group's planned variant ids in sorted order (``daily-a``, ``daily-b`` …), equal weights;
* the arm: ``experiments.assignment.arm_for_bucket(arms, bucket(experiment_id, user_id))`` — SHA-256 of
  ``"experiment_id:user_id"``, its top 53 bits as a fraction of ``[0, 1)``, the first arm whose cumulative
  weight exceeds it (the algorithm is specified, with test vectors, in ``experiments/assignment.py``).

Arms are the *planned* variants, not only the rendered ones, so a user's arm does not move as renders
complete; until the arm's video exists the first variant with a video (in sorted order) is served. Without a
user id (or with one variant) the first variant is served and no experiment is reported.
"""

from __future__ import annotations

from experiments.assignment import arm_for_bucket, bucket


def experiment_id(prefix: str, group: str) -> str:
    return f"{prefix}:{group}"


def choose_arm(experiment: str, variant_ids: list[str], user_id: str | None) -> str:
    """The variant ``user_id`` sees among ``variant_ids`` (sorted here); the first one without a user."""
    arms = sorted(variant_ids)
    if user_id is None or len(arms) == 1:
        return arms[0]
    weight = 1.0 / len(arms)
    return arm_for_bucket([(arm, weight) for arm in arms], bucket(experiment, user_id)) or arms[-1]
