"""Sizes of each scenario: ``QUICK`` (the pytest subset of ``make test``) and ``FULL`` (``make reliability``).

Chosen for a 2-core VM without GPU, shared with other work: the full suite takes about 27 minutes idle (31
under a load average of 5–8), the quick one about 4. Job times are the FakeGenerator's fixed wall time per
clip; labelling and encoding a 240p 2 s clip costs another ~0.1 s of CPU, which the renderer overlaps with the
next clip's generation. ``load`` keeps the issue's 2 renderers: 2,000 clips × 0.5 s / 2 ≈ 8.5 minutes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Crash:
    requests: int
    kills: int
    renderers: int = 2
    job_seconds: float = 0.3
    kill_gap_s: tuple[float, float] = (2.0, 5.0)
    seed: int = 7
    timeout_s: float = 600


@dataclass(frozen=True)
class BrokerOutage:
    products: int
    down_s: float
    renderers: int = 2
    job_seconds: float = 0.3
    timeout_s: float = 300


@dataclass(frozen=True)
class StorageOutage:
    requests: int
    down_s: float
    renderers: int = 2
    job_seconds: float = 1.0  # long enough that work is still going on when the store goes away
    max_attempts: int = 20
    backoff_max_s: float = 5.0
    timeout_s: float = 300


@dataclass(frozen=True)
class Poison:
    skus: int  # SKU keys; each gets every kind of poison, in order, with good requests behind each
    good_per_poison: int = 2
    renderers: int = 1
    job_seconds: float = 0.3
    max_attempts: int = 3
    timeout_s: float = 300


@dataclass(frozen=True)
class Hostile:
    records: int
    seed: int = 20261201
    renderers: int = 2
    job_seconds: float = 0.05
    timeout_s: float = 600


@dataclass(frozen=True)
class Load:
    requests: int
    renderers: int
    job_seconds: float
    warmup_per_renderer: int = 3
    timeout_s: float = 1200


@dataclass(frozen=True)
class Rebalance:
    requests: int
    job_seconds: float = 3.0  # longer than a join takes, so records are mid-render when partitions move
    timeout_s: float = 300


@dataclass(frozen=True)
class Startup:
    runs: int
    products: int = 8
    timeout_s: float = 90


@dataclass(frozen=True)
class Profile:
    name: str
    crash: Crash
    broker: BrokerOutage
    storage: StorageOutage
    poison: Poison
    hostile: Hostile
    load: Load
    startup: Startup
    rebalance: Rebalance


QUICK = Profile(
    name="quick",
    crash=Crash(requests=12, kills=2, job_seconds=1.0, kill_gap_s=(1.0, 2.0)),
    broker=BrokerOutage(products=12, down_s=8),
    storage=StorageOutage(requests=12, down_s=8),
    poison=Poison(skus=1, good_per_poison=1),
    hostile=Hostile(records=200),
    load=Load(requests=60, renderers=2, job_seconds=0.75, warmup_per_renderer=2),
    startup=Startup(runs=2, products=6),
    rebalance=Rebalance(requests=12),
)

FULL = Profile(
    name="full",
    crash=Crash(requests=300, kills=20, job_seconds=0.6),
    broker=BrokerOutage(products=60, down_s=20),
    storage=StorageOutage(requests=60, down_s=30),
    poison=Poison(skus=3, good_per_poison=2),
    hostile=Hostile(records=10_000),
    load=Load(requests=2000, renderers=2, job_seconds=0.5),
    startup=Startup(runs=10),
    rebalance=Rebalance(requests=24),
)

PROFILES = {"quick": QUICK, "full": FULL}
