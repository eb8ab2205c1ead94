"""The reliability suite: real Kafka, an S3 API server that goes away, real service processes, a fake model.

Each scenario module has ``async def run(work: Path, params) -> dict`` returning one entry of
``out/reliability.json``. ``python -m tests.reliability`` runs them; ``test_quick.py`` runs the quick sizes.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from tests.reliability.profiles import Profile

SCENARIOS = ("crash", "broker", "storage", "poison", "hostile", "load", "startup", "rebalance")
_MODULES = {"broker": "broker_outage", "storage": "storage_outage"}


async def run_scenario(name: str, profile: Profile, work: Path, shared=None) -> dict:
    """Run scenario ``name`` at the sizes of ``profile`` in the folder ``work`` (on the ``shared`` rig, if any)."""
    module = importlib.import_module(f"tests.reliability.{_MODULES.get(name, name)}")
    return await module.run(work, getattr(profile, name), shared)
