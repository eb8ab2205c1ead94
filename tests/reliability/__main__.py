"""``python -m tests.reliability --full|--quick --out out/reliability.json [--only crash,load] [--work DIR]``

Runs each scenario against its own fresh Apache Kafka (and S3 API server), one after the other, and writes
one JSON entry per scenario. Exit code 0 when every scenario passed, 1 otherwise. Service logs stay in the
work folder (default ``out/reliability-work``) for inspection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shutil
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from tests.reliability import SCENARIOS, run_scenario
from tests.reliability.profiles import PROFILES


SUMMARY = ("requests", "ready", "failed", "lost", "duplicate_objects", "crashes", "seconds")


def write_report(out: Path, profile: str, started: float, entries: list[dict]) -> dict:
    report = {
        "profile": profile, "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, no GPU used",
        "seconds": round(time.monotonic() - started, 1), "passed": all(e.get("passed") for e in entries),
        "scenarios": entries,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
    return report


def quiet_clients() -> None:
    """The suite's own Kafka clients (tap, producers, admin) retry through broker outages on purpose; their
    connection errors are expected and would drown the progress lines. Service logs are in the work folder."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for name in ("aiokafka", "kafka"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability", description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", dest="profile", action="store_const", const="full")
    size.add_argument("--quick", dest="profile", action="store_const", const="quick")
    parser.add_argument("--out", type=Path, default=Path("out/reliability.json"))
    parser.add_argument("--only", default="", help="comma-separated scenario names (default: all)")
    parser.add_argument("--work", type=Path, default=Path("out/reliability-work"))
    args = parser.parse_args(argv)
    quiet_clients()
    profile = PROFILES[args.profile or "quick"]
    names = [n for n in args.only.split(",") if n] or list(SCENARIOS)
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; choose from {list(SCENARIOS)}")
    shutil.rmtree(args.work, ignore_errors=True)
    started = time.monotonic()
    entries: list[dict] = []
    for name in names:
        print(f"[reliability] {name} ({profile.name}) …", file=sys.stderr, flush=True)
        try:
            entry = asyncio.run(run_scenario(name, profile, args.work / name))
        except Exception as exc:  # noqa: BLE001 - a scenario that could not run is a failed entry, not a stop
            entry = {"scenario": name, "passed": False, "error": f"{type(exc).__name__}: {exc}"[:4000],
                     "traceback": traceback.format_exc()[-4000:]}
        entries.append(entry)
        failed = [check for check, ok in entry.get("checks", {}).items() if not ok]
        print(f"[reliability] {name}: {'passed' if entry.get('passed') else 'FAILED'} "
              f"{ {k: entry.get(k) for k in SUMMARY} }" + (f" failed checks: {failed}" if failed else ""),
              file=sys.stderr, flush=True)
        report = write_report(args.out, profile.name, started, entries)  # after each scenario: a partial report
    print(f"[reliability] {'all passed' if report['passed'] else 'FAILURES'} in {report['seconds']} s -> {args.out}",
          file=sys.stderr)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
