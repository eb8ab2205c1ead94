"""``make demo``: the whole system on the embedded broker (tansu) and the tiny random-weight model.

Starts the broker and both services as real processes, emits the bundled catalog (plus an unsafe product
and a promo), waits for every expected ``video.ready`` (and the refusal), stops everything it started and
writes a product-detail style gallery to ``out/demo/index.html``.

There is no fixed deadline: a busy machine renders slower, not wrong. The demo waits as long as outcomes keep
arriving (a live progress line on stderr) and gives up only after ``idle_timeout_s`` without a new one; the
gallery then lists every expected outcome, the ones that never arrived included.
"""

from __future__ import annotations

import asyncio
import html
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from consumers.planning import Planner
from inference.prompt import PromptEngine
from producers.emit import emit_file, parse_lines
from producers.publisher import Publisher
from schemas.codec import decode
from schemas.events import ProductCreated, PromoStarted, VideoFailed, VideoReady
from schemas.topics import ALL_TOPICS, PRODUCT_CREATED, PROMO_STARTED, VIDEO_FAILED, VIDEO_READY
from skuvid.brokers import TansuBroker, create_topics
from skuvid.kafka_clients import aiokafka_options
from skuvid.settings import Settings, as_env

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT / "tests" / "data"
CATALOG, UNSAFE, PROMO = DATA / "catalog.jsonl", DATA / "catalog_unsafe.jsonl", DATA / "promo.jsonl"


def demo_settings(bootstrap: str, out: Path) -> Settings:
    """The demo's settings: tansu, the tiny model at the CPU preview size, a local folder as the CDN."""
    return Settings(
        kafka_bootstrap=bootstrap,
        kafka_idempotent=False,  # tansu has no InitProducerId
        kafka_one_record_batches=True,  # tansu's end offsets are wrong for multi-record batches
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        model="tiny",
        tiny_model_dir=REPO_ROOT / ".cache" / "tiny-wan2.2",
        tiny_clip_dir=REPO_ROOT / ".cache" / "tiny-clip",
        resolution="240p",
        duration_s=2.0,
        steps=4,
        guidance_scale=1.0,
        quality_max_attempts=1,
        clip_model="tiny",  # scores are computed and published, but a random-weight CLIP means nothing:
        quality_clip_text_min=None,  # so they gate nothing
        quality_clip_image_min=None,
        quality_publish_best_below_gate=True,  # random weights make noise: publish it, flagged
        local_store_dir=out / "cdn",
        cdn_base_url="cdn",  # relative to index.html
        planner_data_dir=out / "planner",
        image_file_root=REPO_ROOT,
        render_policy="eager",  # no listing API runs in the demo: nothing would view the long tail
    )


@dataclass(frozen=True)
class Expected:
    """What the services must deliver: each request's key -> (sku, variant), and the SKUs they must refuse."""

    videos: dict[str, tuple[str, str]]
    refused: set[str]


def expected_outcomes(settings: Settings) -> Expected:
    """The outcomes the services must deliver, computed by the same planner."""
    planner = Planner(PromptEngine.load(absolute_terms_policy=settings.absolute_terms_policy), settings)
    products = {e.sku: e for e in parse_lines(PRODUCT_CREATED, CATALOG, settings.max_payload_bytes)[0]}
    videos: dict[str, tuple[str, str]] = {}
    for event in products.values():
        assert isinstance(event, ProductCreated)
        for r in planner.plan(event.snapshot(), source_event_id=event.event_id).requests:
            videos[r.request_key] = (r.sku, r.variant_id)
    for promo in parse_lines(PROMO_STARTED, PROMO, settings.max_payload_bytes)[0]:
        assert isinstance(promo, PromoStarted)
        for sku in promo.skus:
            for r in planner.plan(products[sku].snapshot(), source_event_id=promo.event_id, promo=promo).requests:
                videos[r.request_key] = (r.sku, r.variant_id)
    refused = {e.sku for e in parse_lines(PRODUCT_CREATED, UNSAFE, settings.max_payload_bytes)[0]}
    return Expected(videos, refused)


async def emit_inputs(settings: Settings) -> None:
    publisher = await Publisher.start(settings, source="urn:skuvid:demo")
    try:
        for topic, path in ((PRODUCT_CREATED, CATALOG), (PRODUCT_CREATED, UNSAFE), (PROMO_STARTED, PROMO)):
            await emit_file(publisher, topic, path, settings.max_payload_bytes)
    finally:
        await publisher.stop()


async def collect(settings: Settings, expected: Expected, idle_timeout_s: float):
    """Read video.ready / video.failed until every expected outcome arrived, or none came for ``idle_timeout_s``."""
    consumer = AIOKafkaConsumer(
        VIDEO_READY.name, VIDEO_FAILED.name, **aiokafka_options(settings),
        auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
    )
    await consumer.start()
    ready: dict[str, VideoReady] = {}
    failed: dict[str, VideoFailed] = {}
    last_progress = time.monotonic()
    live = sys.stderr.isatty()
    try:
        while not (expected.videos.keys() <= ready.keys() and expected.refused <= failed.keys()):
            if time.monotonic() - last_progress > idle_timeout_s:
                break
            before = len(ready) + len(failed)
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    event = decode(record.topic, record.value)
                    if isinstance(event, VideoReady):
                        ready[event.request_key] = event
                    elif isinstance(event, VideoFailed) and event.sku:
                        failed[event.sku] = event
            progressed = len(ready) + len(failed) > before
            if progressed:
                last_progress = time.monotonic()
            if live or progressed:
                _progress_line(expected, ready, failed, time.monotonic() - last_progress, live=live)
    finally:
        await consumer.stop()
        if live:
            print(file=sys.stderr)
    return ready, failed


def _progress_line(expected: Expected, ready: dict, failed: dict, idle_s: float, *, live: bool) -> None:
    """One status line: redrawn in place on a terminal, else a new line per new outcome."""
    wanted = len(expected.videos) + len(expected.refused)
    text = (f"demo: {len(ready)}/{len(expected.videos)} videos ready, {len(failed)}/{len(expected.refused)} refused "
            f"({len(ready) + len(failed)}/{wanted} outcomes; {idle_s:.0f} s since the last)")
    print(f"\r{text}   " if live else text, end="" if live else "\n", file=sys.stderr, flush=True)


def start_services(settings: Settings, log_dir: Path) -> list[subprocess.Popen]:
    env = {**os.environ, **as_env(settings)}
    procs = []
    for role in ("planner", "renderer"):
        log = open(log_dir / f"{role}.log", "wb")  # noqa: SIM115 - lives as long as the process
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "skuvid.cli", "serve", "--role", role],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
        ))
    return procs


def stop_services(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_demo(out: Path, idle_timeout_s: float = 180.0) -> int:
    started = time.monotonic()
    out = out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    (out / "logs").mkdir(parents=True)
    with TansuBroker.start(out / "broker") as broker:
        create_topics(broker.bootstrap, ALL_TOPICS)
        settings = demo_settings(broker.bootstrap, out)
        expected = expected_outcomes(settings)
        procs = start_services(settings, out / "logs")
        try:
            asyncio.run(emit_inputs(settings))
            ready, failed = asyncio.run(collect(settings, expected, idle_timeout_s))
        finally:
            stop_services(procs)
    page = write_gallery(out, expected, ready, failed)
    missing = len(expected.videos.keys() - ready.keys()) + len(expected.refused - failed.keys())
    print(f"demo: {len(ready)}/{len(expected.videos)} videos ready, {len(failed)}/{len(expected.refused)} refused, "
          f"{missing} missing, {time.monotonic() - started:.0f} s; gallery: {page}")
    if missing:
        print(f"demo: {missing} outcomes missing; service logs in {out / 'logs'}", file=sys.stderr)
    return 1 if missing else 0


def write_gallery(out: Path, expected: Expected, ready: dict[str, VideoReady], failed: dict[str, VideoFailed]) -> Path:
    """The product-detail gallery: every expected video (rendered, or marked as never arrived) and every
    expected refusal (with its reason, or marked as never arrived)."""
    e = html.escape
    products = {p.sku: p for p in parse_lines(PRODUCT_CREATED, CATALOG, 1 << 20)[0]}
    cards = [
        _card(products.get(sku), ready[key]) if key in ready else _missing_card(products.get(sku), sku, variant)
        for key, (sku, variant) in sorted(expected.videos.items(), key=lambda item: item[1])
    ]
    refusals = [
        f"<li><b>{e(sku)}</b>: {e(failed[sku].reason.value)} — {e(failed[sku].message)}</li>" if sku in failed
        else f'<li class="missing"><b>{e(sku)}</b>: refusal never arrived</li>'
        for sku in sorted(expected.refused)
    ]
    page = out / "index.html"
    page.write_text(GALLERY.format(cards="\n".join(cards), refusals="\n".join(refusals) or "<li>none</li>"),
                    encoding="utf-8")
    return page


def _missing_card(product, sku: str, variant: str) -> str:
    title = html.escape(product.title) if product else html.escape(sku)
    return f"""<article class="card missing">
  <div class="info"><h2>{title}</h2><p class="sku">{html.escape(sku)} · variant <b>{html.escape(variant)}</b></p>
  <p class="meta">never arrived: no video.ready or video.failed before the demo gave up (see out/demo/logs)</p></div>
</article>"""


def _card(product, video: VideoReady) -> str:
    e = html.escape
    title = e(product.title) if product else e(video.sku)
    points = "".join(f"<li>{e(p)}</li>" for p in (product.selling_points if product else []))
    flag = " (below quality gate, flagged)" if video.quality.flagged else ""
    return f"""<article class="card">
  <video src="{e(video.video_url)}" poster="{e(video.poster_url)}" controls loop muted playsinline
         width="{video.width}" height="{video.height}"></video>
  <div class="info"><h2>{title}</h2><p class="sku">{e(video.sku)} · variant <b>{e(video.variant_id)}</b></p>
  <ul>{points}</ul>
  <details><summary>prompt ({e(video.template_id)})</summary><p>{e(video.prompt)}</p></details>
  <p class="meta">model {e(video.provenance.model)} · seed {video.provenance.seed} · {video.width}×{video.height}
  · {video.duration_s:.1f} s · {video.bytes // 1024} KiB · attempts {video.quality.attempts}{flag}</p></div>
</article>"""


GALLERY = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>skuvid demo</title>
<style>
body{{font-family:system-ui,"PingFang SC","Microsoft YaHei",sans-serif;margin:2rem;background:#f5f5f7;color:#222}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:1.2rem}}
.card{{background:#fff;border-radius:12px;padding:1rem;box-shadow:0 1px 4px #0002;display:flex;flex-direction:column;gap:.6rem}}
video{{width:100%;height:auto;border-radius:8px;background:#000}}
h2{{font-size:1.1rem;margin:.2rem 0}} .sku,.meta{{color:#666;font-size:.85rem}}
.missing{{border:2px dashed #c33;color:#933}}
</style></head><body>
<h1>skuvid demo gallery</h1>
<p>Videos from the built-in tiny random-weight model (real Wan2.2 classes, random weights: expect noise),
labelled “AI生成” and tagged with AIGC metadata.</p>
<div class="grid">
{cards}
</div>
<h2>Refused before any GPU time</h2><ul>{refusals}</ul>
</body></html>
"""
