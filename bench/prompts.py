"""Prompt engine throughput on one core: the sample catalog × its variants, built over and over.

``python -m bench.prompts [-n N]`` prints ``{"prompts_per_s", "n", "median_us"}`` as JSON. Data loading is
outside the timed loop (the engine reads its files once per process); every build runs the whole path:
safety gate, cleaning, visual phrases, token budget, hashing and Prompt validation. Nothing is cached
between builds. The loop is single-threaded (one core). ``prompts_per_s`` divides by the CPU time this
thread spent in the loop (``time.thread_time``), so other processes on a shared machine do not count;
on an idle machine it equals wall-clock throughput. ``median_us`` is the wall-clock median of one build.
"""

from __future__ import annotations

import argparse
import statistics
import time

import orjson

from inference.prompt.engine import PromptEngine
from inference.prompt.golden import golden_variants, read_catalog, read_promos


def run(n: int = 20000) -> dict[str, float | int]:
    """Build ``n`` prompts (cycling through the catalog's variants) and report throughput and median."""
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    engine = PromptEngine.load()
    promos = read_promos()
    jobs = [(p, v) for p in read_catalog() for v in golden_variants(engine, p, promos)]
    for product, variant in jobs:  # warm-up: first-use costs (regex caches, pydantic) stay out
        engine.build(product, variant)
    durations = [0] * n
    clock = time.perf_counter_ns
    cpu_start = time.thread_time()
    for i in range(n):
        product, variant = jobs[i % len(jobs)]
        t0 = clock()
        engine.build(product, variant)
        durations[i] = clock() - t0
    cpu_s = time.thread_time() - cpu_start
    return {"prompts_per_s": round(n / cpu_s, 1), "n": n, "median_us": round(statistics.median(durations) / 1e3, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prompt engine throughput on one core.")
    parser.add_argument("-n", type=int, default=20000, help="prompts to build (default 20000)")
    args = parser.parse_args(argv)
    print(orjson.dumps(run(args.n)).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
