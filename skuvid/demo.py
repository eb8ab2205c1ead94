"""``make demo``: the whole system on the embedded broker (tansu) and the tiny random-weight model.

Starts the broker and both services as real processes, emits the bundled catalog (plus an unsafe product
and a promo), waits for every expected ``video.ready`` (and the refusal), stops everything it started and
writes a product-detail style gallery to ``out/demo/index.html``.
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
    )


def expected_outcomes(settings: Settings) -> tuple[set[str], set[str]]:
    """Request keys the services must deliver, and SKUs they must refuse, computed by the same planner."""
    planner = Planner(PromptEngine.load(absolute_terms_policy=settings.absolute_terms_policy), settings)
    products = {e.sku: e for e in parse_lines(PRODUCT_CREATED, CATALOG, settings.max_payload_bytes)[0]}
    keys: set[str] = set()
    for event in products.values():
        assert isinstance(event, ProductCreated)
        keys |= {r.request_key for r in planner.plan(event.snapshot(), source_event_id=event.event_id).requests}
    for promo in parse_lines(PROMO_STARTED, PROMO, settings.max_payload_bytes)[0]:
        assert isinstance(promo, PromoStarted)
        for sku in promo.skus:
            plan = planner.plan(products[sku].snapshot(), source_event_id=promo.event_id, promo=promo)
            keys |= {r.request_key for r in plan.requests}
    refused = {e.sku for e in parse_lines(PRODUCT_CREATED, UNSAFE, settings.max_payload_bytes)[0]}
    return keys, refused


async def emit_inputs(settings: Settings) -> None:
    publisher = await Publisher.start(settings, source="urn:skuvid:demo")
    try:
        for topic, path in ((PRODUCT_CREATED, CATALOG), (PRODUCT_CREATED, UNSAFE), (PROMO_STARTED, PROMO)):
            await emit_file(publisher, topic, path, settings.max_payload_bytes)
    finally:
        await publisher.stop()


async def collect(settings: Settings, keys: set[str], refused: set[str], timeout_s: float):
    """Read video.ready / video.failed until every expected outcome arrived (or the time is up)."""
    consumer = AIOKafkaConsumer(
        VIDEO_READY.name, VIDEO_FAILED.name, bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
    )
    await consumer.start()
    ready: dict[str, VideoReady] = {}
    failed: dict[str, VideoFailed] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while (not keys <= ready.keys() or not refused <= failed.keys()) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    event = decode(record.topic, record.value)
                    if isinstance(event, VideoReady):
                        ready[event.request_key] = event
                    elif isinstance(event, VideoFailed) and event.sku:
                        failed[event.sku] = event
    finally:
        await consumer.stop()
    return ready, failed


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


def run_demo(out: Path, timeout_s: float = 300.0) -> int:
    started = time.monotonic()
    out = out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    (out / "logs").mkdir(parents=True)
    with TansuBroker.start(out / "broker") as broker:
        create_topics(broker.bootstrap, ALL_TOPICS)
        settings = demo_settings(broker.bootstrap, out)
        keys, refused = expected_outcomes(settings)
        procs = start_services(settings, out / "logs")
        try:
            asyncio.run(emit_inputs(settings))
            ready, failed = asyncio.run(collect(settings, keys, refused, timeout_s))
        finally:
            stop_services(procs)
    page = write_gallery(out, ready, failed)
    missing = len(keys - ready.keys()) + len(refused - failed.keys())
    print(f"demo: {len(ready)}/{len(keys)} videos ready, {len(failed)} refused, "
          f"{time.monotonic() - started:.0f} s; gallery: {page}")
    if missing:
        print(f"demo: {missing} outcomes missing; service logs in {out / 'logs'}", file=sys.stderr)
    return 1 if missing else 0


def write_gallery(out: Path, ready: dict[str, VideoReady], failed: dict[str, VideoFailed]) -> Path:
    products = {e.sku: e for e in parse_lines(PRODUCT_CREATED, CATALOG, 1 << 20)[0]}
    cards = [_card(products.get(v.sku), v) for v in sorted(ready.values(), key=lambda v: (v.sku, v.variant_id))]
    refusals = [
        f"<li><b>{html.escape(f.sku or '')}</b>: {html.escape(f.reason.value)} — {html.escape(f.message)}</li>"
        for f in failed.values()
    ]
    page = out / "index.html"
    page.write_text(GALLERY.format(cards="\n".join(cards), refusals="\n".join(refusals) or "<li>none</li>"),
                    encoding="utf-8")
    return page


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
