"""Listing API lookups on one core: over HTTP, in process, and as a raw read of the index's backing store.

One run, one index of ``n`` SKUs (default 100,000; each with a rendered daily video, a tenth also with a promo
video inside its window), built the way a replica builds it — encoded ``video.planned`` / ``video.ready``
records decoded and applied (``api.feed`` without the broker) — then measured three ways, side by side:

* ``http``: ``GET /v1/skus/{sku}/video?user=…`` against uvicorn + FastAPI in a child process pinned to one
  core, driven from the other core by a minimal keep-alive HTTP/1.1 client (32 connections), random SKUs;
* ``index_lookup``: ``ApiService.lookup`` in process (promo window, A/B choice, fallbacks), one core;
* ``store_read``: the raw read of the same answer from the index's dicts (``skus[sku]`` -> slot ->
  ``videos[key]``), the floor any lookup pays. ``ratio_vs_store`` = http lookups/s over store reads/s.
  Per-operation times below a microsecond are mostly the timer's own cost (~0.3 µs here).

Also: the rebuild rate (records decoded and applied per second vs ``orjson.loads`` alone on the same bytes)
and the index's memory per SKU (tracemalloc over a 10,000-SKU build).

``python -m bench.api [-n N] [--seconds S]`` or ``skuvid bench api --json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import os
import random
import signal
import socket
import sys
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from api.index import VideoIndex
from api.service import ApiService
from schemas.codec import decode, encode_value
from schemas.events import OverlayCaption, ProductCreated, VideoPlanned, VideoRequested
from schemas.topics import VIDEO_PLANNED, VIDEO_READY
from skuvid.settings import Settings

REPO = Path(__file__).resolve().parents[1]
PROMO_SHARE = 10  # one SKU in this many has a promo video inside its window
CONNECTIONS = 32


def _template(settings: Settings) -> VideoRequested:
    from consumers.planning import Planner  # noqa: PLC0415
    from inference.prompt import PromptEngine  # noqa: PLC0415

    row = orjson.loads((REPO / "tests" / "data" / "catalog.jsonl").read_bytes().splitlines()[1])
    product = ProductCreated.model_validate(row)
    return Planner(PromptEngine.load(), settings).plan(product.snapshot(), source_event_id="evt-bench").requests[0]


def records(n: int, template: VideoRequested, now: datetime) -> Iterator[tuple[str, bytes, int]]:
    """(topic, encoded value, offset) of every record of an ``n``-SKU catalog, planned then ready."""
    window = OverlayCaption(text="限时5折", start_s=0, end_s=2, promo_id="P-BENCH", valid_from=now - timedelta(hours=1),
                            valid_until=now + timedelta(hours=1))
    promo_prompt = template.prompt.model_copy(update={"overlays": [window]})
    for i in range(n):
        sku = f"B-{i:07d}"
        variants = [("daily-a", template.prompt)] + ([("promo-P-BENCH-a", promo_prompt)] if i % PROMO_SHARE == 0
                                                     else [])
        for variant, prompt in variants:
            key = hashlib.sha256(f"{sku}|{variant}".encode()).hexdigest()
            request = template.model_copy(update={"sku": sku, "variant_id": variant, "request_key": key,
                                                  "prompt": prompt})
            plan = VideoPlanned(event_id=f"plan-{key[:32]}", occurred_at=now, request=request, dispatched=True)
            yield VIDEO_PLANNED.name, encode_value(plan), i
            base = f"https://cdn.example.com/videos/{sku}/{key}"
            ready = {"event_id": f"ready-{key[:32]}", "occurred_at": now.isoformat(), "request_key": key, "sku": sku,
                     "variant_id": variant, "video_url": f"{base}.mp4", "poster_url": f"{base}.jpg",
                     "feed_video_url": None, "width": 832, "height": 480, "num_frames": 121, "fps": 24,
                     "duration_s": 5.0, "bytes": 1_500_000, "sha256": key, "prompt": prompt.positive,
                     "template_id": prompt.template_id,
                     "quality": {"passed": True, "attempts": 1, "scores": {}, "flagged": False},
                     "provenance": {"content_producer": "skuvid", "produce_id": key, "model": template.model,
                                    "seed": 1, "source_event_id": "evt-bench", "rendered_at": now.isoformat()}}
            yield VIDEO_READY.name, orjson.dumps(ready), i


def build(n: int, template: VideoRequested, now: datetime) -> tuple[VideoIndex, dict[str, float]]:
    """The index of ``n`` SKUs from their encoded records (streamed: only the index stays), timing the
    decode + apply of each record, and ``orjson.loads`` alone on the same bytes."""
    index = VideoIndex()
    clock = time.perf_counter
    applied_s = parse_s = 0.0
    count = 0
    for topic, value, offset in records(n, template, now):
        t0 = clock()
        orjson.loads(value)
        t1 = clock()
        index.apply(topic, decode(topic, value), 0, offset)
        applied_s += clock() - t1
        parse_s += t1 - t0
        count += 1
    return index, {"records": count, "records_per_s": round(count / applied_s),
                   "parse_only_per_s": round(count / parse_s), "ratio_vs_parse": round(parse_s / applied_s, 3)}


def index_bytes_per_sku(template: VideoRequested, now: datetime, n: int = 10_000) -> float:
    """Bytes the index holds per SKU: everything allocated while decoding and applying the records that is
    still alive afterwards (tracemalloc; the decoded events themselves are freed)."""
    data = list(records(n, template, now))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    index = VideoIndex()
    for topic, value, offset in data:
        index.apply(topic, decode(topic, value), 0, offset)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(index.skus) == n
    return held / n


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and cpu in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {cpu})


def _percentiles(samples_ns: list[int], unit: float) -> dict[str, float]:
    ordered = sorted(samples_ns)
    return {"p50": round(ordered[len(ordered) // 2] / unit, 3), "p99": round(ordered[int(len(ordered) * 0.99)] / unit, 3)}


def timed_loop(op, keys: list[tuple[str, str]], seconds: float) -> tuple[float, list[int]]:
    samples: list[int] = []
    clock = time.perf_counter_ns
    deadline = clock() + int(seconds * 1e9)
    i = 0
    started = clock()
    while clock() < deadline:
        for sku, user in keys[i:i + 1000]:
            t0 = clock()
            op(sku, user)
            samples.append(clock() - t0)
        i = (i + 1000) % (len(keys) - 1000)
    return len(samples) / ((clock() - started) / 1e9), samples


def serve_forever(service: ApiService, port: int, cpu: int) -> None:
    """The child: uvicorn + FastAPI over the inherited index, pinned to ``cpu``."""
    import uvicorn  # noqa: PLC0415

    from api.app import create_app  # noqa: PLC0415

    _pin(cpu)
    config = uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning",
                            access_log=False, lifespan="off")
    uvicorn.Server(config).run()
    os._exit(0)


async def http_load(port: int, keys: list[tuple[str, str]], seconds: float,
                    connections: int = CONNECTIONS) -> dict[str, Any]:
    """``connections`` keep-alive connections, one request in flight on each, for ``seconds``."""
    latencies: list[int] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = n
        try:
            while time.perf_counter() < deadline:
                sku, user = keys[i % len(keys)]
                i += connections
                t0 = time.perf_counter_ns()
                writer.write(f"GET /v1/skus/{sku}/video?user={user} HTTP/1.1\r\nHost: b\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                latencies.append(time.perf_counter_ns() - t0)
                errors += not head.startswith(b"HTTP/1.1 200")
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(connections)))
    elapsed = time.perf_counter() - started
    return {"lookups_per_s": round(len(latencies) / elapsed), **{f"{k}_ms": v for k, v in
            _percentiles(latencies, 1e6).items()}, "requests": len(latencies), "errors": errors,
            "connections": connections}


def _wait_port(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"the API child did not listen on {port}")


def run(n: int = 100_000, seconds: float = 5.0) -> dict[str, Any]:
    from inference.prompt import PromptEngine  # noqa: PLC0415
    from skuvid.brokers import free_port  # noqa: PLC0415

    settings = Settings(model="tiny")
    now = datetime.now(UTC)
    template = _template(settings)
    per_sku = index_bytes_per_sku(template, now)
    index, rebuild = build(n, template, now)

    async def never(*_args):  # every SKU has its video: nothing is sent
        raise AssertionError("the benchmark sends nothing")

    service = ApiService(settings, index, PromptEngine.load(), publish=never, read_planned=never, committed=never)
    rng = random.Random(1)
    keys = [(f"B-{rng.randrange(n):07d}", f"u-{rng.randrange(10**6)}") for _ in range(200_000)]
    assert service.lookup(keys[0][0], user=keys[0][1], region=None).video is not None

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    server_cpu, client_cpu = cpus[0], cpus[-1]
    port = free_port()
    child = os.fork()
    if child == 0:
        serve_forever(service, port, server_cpu)
    try:
        _pin(client_cpu)
        _wait_port(port)
        asyncio.run(http_load(port, keys, 1.0))  # warm-up
        http = asyncio.run(http_load(port, keys, seconds))
        unloaded = asyncio.run(http_load(port, keys, min(seconds, 2.0), connections=1))
    finally:
        os.kill(child, signal.SIGTERM)
        os.waitpid(child, 0)

    _pin(server_cpu)
    lookup_rate, lookup_ns = timed_loop(lambda sku, user: service.lookup(sku, user=user, region=None), keys, seconds)

    def store_read(sku: str, _user: str) -> object:
        return index.videos[index.skus[sku].slots["daily-a"].request_key]

    store_rate, store_ns = timed_loop(store_read, keys, seconds)
    return {
        "bench": "api", "date": now.date().isoformat(), "skus": n, "promo_skus": n // PROMO_SHARE,
        "http": http,
        "http_one_connection": {k: unloaded[k] for k in ("lookups_per_s", "p50_ms", "p99_ms")},
        "index_lookup": {"lookups_per_s": round(lookup_rate),
                         **{f"{k}_us": v for k, v in _percentiles(lookup_ns, 1e3).items()}},
        "store_read": {"reads_per_s": round(store_rate),
                       **{f"{k}_us": v for k, v in _percentiles(store_ns, 1e3).items()}},
        "ratio_vs_store": round(http["lookups_per_s"] / store_rate, 5),
        "index_ratio_vs_store": round(lookup_rate / store_rate, 4),
        "rebuild": rebuild,
        "memory": {"index_bytes_per_sku": round(per_sku), "index_mib_per_1m_skus": round(per_sku * 1e6 / 2**20)},
        "machine": {"cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2), "python": sys.version.split()[0],
                    "server": "uvicorn (h11, asyncio loop) + FastAPI, one process pinned to one core"},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(orjson.dumps(run(args.n, args.seconds), option=orjson.OPT_INDENT_2).decode())
