"""Where a benchmark's CPU went: each process's CPU time over a timed window, per record, and how busy the
machine was.

A ratio between two throughputs says which is faster, not why. On a small machine the broker, the load
generator and the process under test share the cores, so each side of a benchmark also reports what every
process spent per record: whether the process under test was the bottleneck (its CPU share near one core,
the machine not saturated) or starved (the machine busy), and what it costs per record to begin with.

``with CpuMeter({"broker": pid, "planner": pid}) as meter: ...`` then ``meter.per_record(n)``: a process's
figure includes its children's (a broker launched through a script); ``harness`` is this process (the load
generator, the output watcher and, for a raw baseline, the raw client itself).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import psutil

HARNESS = "harness"


def _cpu_s(process: psutil.Process, children: bool = True) -> float:
    """CPU seconds of ``process`` and, with ``children``, its live children; raises ``psutil.NoSuchProcess``
    once ``process`` has exited (a process that ends inside the window has no figure)."""
    total = 0.0
    for p in (process, *(process.children(recursive=True) if children else ())):
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            if p is process:
                raise
            continue  # a child that ended meanwhile
        total += times.user + times.system
    return total


class CpuMeter:
    """CPU seconds spent by named processes (and this one, as ``harness``) between ``__enter__`` and
    ``__exit__``, and the machine's busy fraction over the same window."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self._processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._processes[HARNESS] = psutil.Process(os.getpid())
        self._start: dict[str, float] = {}
        self.spent: dict[str, float] = {}
        self.machine_busy = 0.0

    def __enter__(self) -> CpuMeter:
        self._start = self._cpu()
        self._machine = psutil.cpu_times()
        return self

    def __exit__(self, *exc: object) -> None:
        self.spent = {name: seconds - self._start[name] for name, seconds in self._cpu().items()}
        before, after = _machine_times(self._machine), _machine_times(psutil.cpu_times())
        total = after[0] - before[0]
        self.machine_busy = 1 - (after[1] - before[1]) / total if total > 0 else 0.0

    def _cpu(self) -> dict[str, float]:
        # the harness alone: the processes it launched (broker, planner) are counted under their own names
        return {name: _cpu_s(p, children=name != HARNESS) for name, p in self._processes.items()}

    def per_record(self, records: int) -> dict[str, float]:
        """``{"<name>_cpu_us": CPU µs per record, …, "machine_busy": 0–1}``."""
        out = {f"{name}_cpu_us": round(1e6 * seconds / records, 1) for name, seconds in self.spent.items()}
        out["machine_busy"] = round(self.machine_busy, 2)
        return out


def _machine_times(times) -> tuple[float, float]:
    """(all, idle) CPU seconds of the machine; guest time is already counted in user time on Linux."""
    guest = getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    return sum(times) - guest, times.idle + getattr(times, "iowait", 0.0)
