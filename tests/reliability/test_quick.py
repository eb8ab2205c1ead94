"""The reliability suite at its quick sizes (``profiles.QUICK``), one case per scenario, in ``make test``.

The scenarios that keep the broker (all but ``startup``, which starts its own fresh ones) share one Apache
Kafka and one S3 API server for this module, each with its own consumer groups, SKUs and log folder; the
``broker`` case restarts that broker, so it runs last of them. ``make reliability`` runs the full sizes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability import run_scenario
from tests.reliability.profiles import QUICK
from tests.reliability.rig import Rig

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    shared = Rig.start(tmp_path_factory.mktemp("reliability"))
    try:
        yield shared
    finally:
        shared.close()


def explain(entry: dict) -> str:
    failed = [name for name, ok in entry.get("checks", {}).items() if not ok]
    shown = {k: v for k, v in entry.items() if k not in ("books", "checks", "kill_log", "per_run")}
    return f"failed checks {failed}; " + json.dumps(shown, default=str, ensure_ascii=False)[:6000]


async def check(name: str, tmp_path: Path, shared: Rig | None) -> None:
    entry = await run_scenario(name, QUICK, tmp_path / name, shared)
    assert entry["passed"], explain(entry)


async def test_crash_kills_lose_nothing(rig: Rig, tmp_path: Path) -> None:
    await check("crash", tmp_path, rig)


async def test_storage_outage_is_retried_until_the_store_returns(rig: Rig, tmp_path: Path) -> None:
    await check("storage", tmp_path, rig)


async def test_poison_fails_bounded_and_good_requests_behind_it_complete(rig: Rig, tmp_path: Path) -> None:
    await check("poison", tmp_path, rig)


async def test_hostile_records_all_end_with_a_reason_and_never_reach_the_canary(rig: Rig, tmp_path: Path) -> None:
    await check("hostile", tmp_path, rig)


async def test_load_reaches_ninety_percent_of_ideal_with_flat_memory(rig: Rig, tmp_path: Path) -> None:
    await check("load", tmp_path, rig)


async def test_rebalance_mid_render_yields_one_video_per_request(rig: Rig, tmp_path: Path) -> None:
    await check("rebalance", tmp_path, rig)


async def test_broker_outage_services_recover_by_themselves(rig: Rig, tmp_path: Path) -> None:
    await check("broker", tmp_path, rig)


async def test_planner_on_a_fresh_broker_dead_letters_and_duplicates_nothing(tmp_path: Path) -> None:
    await check("startup", tmp_path, None)
