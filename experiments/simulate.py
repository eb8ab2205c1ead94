"""Seeded engagement traffic with a known truth, to check the whole analysis end to end.

Two generators, same model of a user:

* ``simulate_events`` writes the event stream itself (page views, dwell, plays, add to cart, orders, with
  pre-period covariates and injected duplicates), arms from ``experiments.assignment`` exactly as the listing
  service would: for the aggregator, the agent and the report.
* ``simulate_daily_conversions`` draws only the daily per-arm counts of many experiments at once (numpy),
  for false-positive rates over hundreds of experiments in a second.

The user model: a propensity ``u ~ Beta(p·k, (1-p)·k)`` (mean ``p``, the control add-to-cart rate; smaller
``k`` means more different users). A control user adds to cart with probability ``u``; a treatment user
also converts with an independent probability ``q = (p_t - p) / (1 - p)``, so the arm's rate is exactly
``p_t``. Orders follow an add to cart with probability ``order_given_cart`` (order uplift = cart uplift).
The pre-period covariate is ``Poisson(pre_visits · u)`` add-to-carts (and dwell of the same user's speed),
which is what makes CUPED work; ``covariates=False`` leaves it out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np

from experiments.assignment import assign_many
from schemas.engagement import EngagementEvent, EngagementKind, Experiment, PrePeriod


@dataclass(frozen=True)
class SimulationSpec:
    """What to simulate. Rates and dwell means are per arm id; arms left out behave like control."""

    experiment: Experiment
    users: int = 20_000  # users arriving (before the split: those outside the traffic are dropped)
    days: int = 14
    add_to_cart: dict[str, float] = field(default_factory=dict)  # per-user add-to-cart rate per arm
    control_add_to_cart: float = 0.153
    order_given_cart: float = 0.35
    dwell_mean_s: dict[str, float] = field(default_factory=dict)  # per-user mean total dwell per arm
    control_dwell_mean_s: float = 40.0
    heterogeneity: float = 2.0  # k of the Beta propensity: smaller, more heterogeneous users
    pre_visits: float = 5.0
    covariates: bool = True
    duplicate_rate: float = 0.0  # share of events sent twice (at-least-once producers)
    categories: tuple[str, ...] = ("3c", "kitchen", "beauty")
    channels: tuple[str, ...] = ("app", "web", "mini-program")
    regions: tuple[str, ...] = ("CN-31", "CN-44", "CN-11")
    seed: int = 0

    def cart_rate(self, arm_id: str) -> float:
        return self.add_to_cart.get(arm_id, self.control_add_to_cart)

    def dwell_mean(self, arm_id: str) -> float:
        return self.dwell_mean_s.get(arm_id, self.control_dwell_mean_s)

    def true_uplift(self, arm_id: str) -> float:
        """The true relative add-to-cart uplift of ``arm_id`` over control."""
        return self.cart_rate(arm_id) / self.control_add_to_cart - 1


def simulate_events(spec: SimulationSpec) -> list[EngagementEvent]:
    """The experiment's engagement stream, in time order (duplicates follow their original within minutes)."""
    rng = np.random.default_rng(spec.seed)
    exp = spec.experiment
    user_ids = [f"u{spec.seed}-{i:07d}" for i in range(spec.users)]
    arm_index = assign_many(exp, user_ids)
    keep = np.flatnonzero(arm_index >= 0)
    n = keep.size
    arms = [exp.arms[i] for i in arm_index[keep]]
    p_c = spec.control_add_to_cart
    k = spec.heterogeneity
    u = rng.beta(p_c * k, (1 - p_c) * k, size=n)
    lift = np.array([(spec.cart_rate(a.arm_id) - p_c) / (1 - p_c) for a in arms])
    if np.any(lift < 0):
        raise ValueError("simulate_events models uplifts >= 0 only (treatment rates at least the control rate)")
    carted = (rng.random(n) < u) | (rng.random(n) < lift)
    ordered = carted & (rng.random(n) < spec.order_given_cart)
    speed = rng.lognormal(-0.125, 0.5, size=n)  # mean 1: how long this user looks at pages
    views = 1 + rng.poisson(0.6, size=n)
    dwell_means = np.array([spec.dwell_mean(a.arm_id) for a in arms]) * speed
    pre_carts = rng.poisson(spec.pre_visits * u)
    pre_orders = rng.binomial(pre_carts, spec.order_given_cart)
    pre_dwell = rng.gamma(2.0, spec.control_dwell_mean_s * speed * spec.pre_visits / 2.0)
    arrival = rng.random(n) * spec.days * 86_400.0
    categories = rng.integers(len(spec.categories), size=n)
    channels = rng.integers(len(spec.channels), size=n)
    regions = rng.integers(len(spec.regions), size=n)
    start = exp.starts_at
    skus_per_category = 20
    rows: list[tuple[float, dict]] = []
    for i in range(n):
        arm = arms[i]
        category = spec.categories[categories[i]]
        base = {
            "experiment_id": exp.experiment_id, "arm": arm.arm_id, "user_id": user_ids[keep[i]],
            "category": category, "channel": spec.channels[channels[i]], "region": spec.regions[regions[i]],
        }
        t = arrival[i]
        shares = rng.dirichlet(np.ones(views[i]))
        video = arm.variant_id != "none"
        for v in range(views[i]):
            sku = f"SKU-C{categories[i]}-{int(rng.integers(skus_per_category)):03d}"
            view = {**base, "kind": EngagementKind.PAGE_VIEW, "sku": sku, "variant_id": arm.variant_id}
            if v == 0 and spec.covariates:
                view["pre_period"] = PrePeriod(dwell_s=float(pre_dwell[i]), add_to_cart=int(pre_carts[i]),
                                               orders=int(pre_orders[i]))
            rows.append((t, view))
            dwell = float(rng.gamma(2.0, dwell_means[i] * shares[v] / 2.0))
            if video and rng.random() < 0.6:
                rows.append((t + 1, {**base, "kind": EngagementKind.VIDEO_PLAY, "sku": sku,
                                     "watch_time_s": round(min(dwell, 5.0 + 10 * rng.random()), 3)}))
            if v == views[i] - 1 and carted[i]:
                rows.append((t + 2, {**base, "kind": EngagementKind.ADD_TO_CART, "sku": sku}))
                if ordered[i]:
                    rows.append((t + 3, {**base, "kind": EngagementKind.ORDER, "sku": sku}))
            rows.append((t + 4 + dwell, {**base, "kind": EngagementKind.DWELL, "sku": sku,
                                         "dwell_s": round(dwell, 3)}))
            t += 10 + dwell + 60 * rng.random()
    rows.sort(key=lambda row: row[0])
    events = [
        EngagementEvent(event_id=f"sim{spec.seed}-{j:08d}", occurred_at=start + timedelta(seconds=t), **fields)
        for j, (t, fields) in enumerate(rows)
    ]
    return _with_duplicates(events, spec.duplicate_rate, rng)


def _with_duplicates(events: list[EngagementEvent], rate: float, rng: np.random.Generator) -> list[EngagementEvent]:
    """Each event re-sent with probability ``rate``, a few positions later (a producer retry)."""
    if rate <= 0:
        return events
    out: list[EngagementEvent] = []
    pending: list[tuple[int, EngagementEvent]] = []
    for j, event in enumerate(events):
        out.append(event)
        if rng.random() < rate:
            pending.append((j + int(rng.integers(1, 50)), event))
        while pending and pending[0][0] <= j:
            out.append(pending.pop(0)[1])
        pending.sort(key=lambda item: item[0])
    out.extend(event for _, event in pending)
    return out


@dataclass(frozen=True)
class DailyConversions:
    """Cumulative per-arm users and converters at the end of each day: arrays of shape (experiments, days)."""

    n_treatment: np.ndarray
    x_treatment: np.ndarray
    n_control: np.ndarray
    x_control: np.ndarray


def simulate_daily_conversions(
    experiments: int, days: int, users_per_day: float, p_control: float, p_treatment: float,
    treatment_share: float = 0.5, seed: int = 0,
) -> DailyConversions:
    """Many independent two-arm experiments at once: Poisson arrivals, a Binomial split (what a uniform hash
    gives), Binomial conversions per user. With ``p_treatment == p_control`` every rejection is a false one."""
    rng = np.random.default_rng(seed)
    arrivals = rng.poisson(users_per_day, size=(experiments, days))
    n_t = rng.binomial(arrivals, treatment_share)
    n_c = arrivals - n_t
    x_t = rng.binomial(n_t, p_treatment)
    x_c = rng.binomial(n_c, p_control)
    cum = np.cumsum
    return DailyConversions(cum(n_t, axis=1), cum(x_t, axis=1), cum(n_c, axis=1), cum(x_c, axis=1))

