"""The prompt benchmark runs and reports what the CLI prints."""

from __future__ import annotations

import pytest

from bench.prompts import run


def test_run_reports_throughput_and_median() -> None:
    result = run(n=300)
    assert set(result) == {"prompts_per_s", "n", "median_us"}
    assert result["n"] == 300
    assert result["prompts_per_s"] > 0 and result["median_us"] > 0
    assert result["median_us"] < 1e6 / 50  # sanity: far below 20 ms per prompt even on a busy CI core


def test_run_refuses_a_zero_count() -> None:
    with pytest.raises(ValueError, match="n must be"):
        run(n=0)
