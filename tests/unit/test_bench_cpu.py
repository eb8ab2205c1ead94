"""bench.cpu: what each process spent, per record, over a window (real processes, real /proc figures)."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from bench.cpu import CpuMeter

BURN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\ntime.sleep(30)"


def _burner(seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BURN.format(s=seconds)])


def _wait_idle(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """Until the child has burnt its CPU and sleeps (its CPU time stops growing)."""
    process, last, deadline = psutil.Process(proc.pid), -1.0, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        times = process.cpu_times()
        spent = times.user + times.system
        if spent == last and spent > 0:
            return
        last = spent
        time.sleep(0.3)
    raise TimeoutError("the child kept burning CPU")


def test_each_process_is_charged_what_it_spent_inside_the_window_only():
    before, inside = _burner(0.3), None
    try:
        _wait_idle(before)  # its CPU is spent before the window opens: not charged
        with CpuMeter({"early": before.pid}) as meter:
            inside = _burner(0.4)
            with CpuMeter({"late": inside.pid}) as inner:
                _wait_idle(inside)
        figures = meter.per_record(4)
        assert figures["early_cpu_us"] < 20_000  # sleeping all along
        late = inner.per_record(1)["late_cpu_us"]
        assert 0.3e6 <= late <= 1.5e6  # the 0.4 s it burnt (and its start-up)
        assert 0 < figures["machine_busy"] <= 1
        assert figures["harness_cpu_us"] < late / 4  # this process mostly slept: the child is not counted in it
    finally:
        for proc in (before, inside):
            if proc is not None:
                proc.kill()
                proc.wait()


def test_a_process_that_ends_inside_the_window_has_no_figure_rather_than_a_wrong_one():
    proc = _burner(0.0)
    meter = CpuMeter({"gone": proc.pid})
    meter.__enter__()
    proc.kill()
    proc.wait()
    with pytest.raises(psutil.NoSuchProcess):
        meter.__exit__(None, None, None)
