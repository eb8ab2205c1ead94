"""The trust loop end to end on real Apache Kafka: a planner, a renderer (tiny model, C2PA signing with a chain
made here) and two API replicas with review on, as real ``skuvid serve`` processes; the videos on a local
"CDN" over HTTP; reviewers in headless Chromium on the real review page.

The module has a broker of its own: a replica's review queue is every video ever on ``video.ready`` (read from
the beginning), so on the session's broker the videos earlier modules left are queued ahead of this module's
(issue 13: bob and alice were handed two variants of test_api's hot SKU — two videos, one SKU).

First, two replicas' review desks in this process race for one queued video, round after round: both claim
it, the first claim in the log wins on both replicas and the other reviewer gets nothing.

Then, in order, sharing the processes: both products' videos are published, signed (the manifest validates
against the test CA, the AIGC label is intact) and served; bob claims one on replica 2, alice opens the page
on replica 1 and gets the other one (the claim log keeps them apart), plays it (screenshot in
``out/review/``), and the page shows the hostile title as text; the bad product's video is rejected with the
keyboard shortcut, the good one approved with a click; ``video.reviewed`` and ``video.withdrawn`` appear, the
replicas stop serving the rejected video, a re-render (new seed and key, hot lane) is requested, rendered,
signed, served and queued for review as a re-render; the report and ``skuvid review export`` count both
verdicts.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import http.server
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest
from pydantic import BaseModel

from api.feed import IndexFeed
from api.index import VideoIndex
from inference.c2pa_sign import GENERATION_ASSERTION, read_credentials, top_level_boxes
from inference.labels import read_aigc
from inference.prompt import PromptEngine
from producers.publisher import Publisher
from review.desk import ReviewDesk, VerdictBody
from schemas.codec import ce_headers, encode_value
from schemas.events import ReviewClaim, Verdict, VideoRequested, VideoReviewed, VideoWithdrawn, WithdrawalAction
from schemas.topics import (
    ALL_TOPICS,
    PRODUCT_CREATED,
    VIDEO_READY,
    VIDEO_REQUESTED_HOT,
    VIDEO_REVIEWED,
    VIDEO_WITHDRAWN,
    Topic,
)
from skuvid.brokers import KafkaBroker, create_topics, free_port
from skuvid.settings import Settings, as_env
from tests.credentials import make_chain
from tests.integration.browser import Browser
from tests.integration.harness import DATA, REPO_ROOT, Service, produce_raw, run, service_settings
from tests.integration.test_api import read_all, wait_for
from tests.unit.test_api_index import plans, product
from tests.unit.test_api_index import ready as rendered

pytestmark = [pytest.mark.kafka]

TAG = uuid.uuid4().hex[:6]
GOOD, BAD = f"SKU-RG{TAG}", f"SKU-RB{TAG}"
HOSTILE = '<script>window.__pwned=1</script>Mug "Aroma" & <b>co</b>'
TOKENS = {"alice": "alice-" + uuid.uuid4().hex, "bob": "bob-" + uuid.uuid4().hex}
SCREENSHOT = REPO_ROOT / "out" / "review" / "review-page.png"
RACE_ROUNDS = 40


def basic(reviewer: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{reviewer}:{TOKENS[reviewer]}".encode()).decode()}


class Cdn:
    """The local store's folder over HTTP, as a CDN would serve it (the browser plays from here)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        handler = functools.partial(_Quiet, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def review_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """Apache Kafka for this module alone, with ALL_TOPICS: its review queue holds only its own videos."""
    with KafkaBroker.start(tmp_path_factory.mktemp("review-kafka"), repo_root=REPO_ROOT) as broker:
        create_topics(broker.bootstrap, ALL_TOPICS)
        yield broker


@pytest.fixture(scope="module")
def stack(review_broker, tmp_path_factory):
    work: Path = tmp_path_factory.mktemp("review")
    chain = make_chain(work / "c2pa")
    cdn = Cdn(work / "cdn")
    settings = service_settings(
        review_broker.bootstrap, work, api_host="127.0.0.1", fps=8, clip_model=None, cdn_base_url=cdn.url,
        review_enabled=True, review_reviewers=",".join(f"{k}:{v}" for k, v in TOKENS.items()),
        review_sample_rate=1.0, review_lease_s=120, **chain.settings_fields(),
    )
    planner, renderer = Service("planner", settings, work), Service("renderer", settings, work)
    ports = [free_port(), free_port()]
    apis = [Service("api", settings.model_copy(update={"api_port": port}), work) for port in ports]
    state = {"settings": settings, "urls": [f"http://127.0.0.1:{p}" for p in ports], "apis": apis, "work": work,
             "chain": chain, "cdn": cdn, "services": (planner, renderer, *apis)}
    try:
        for api, url in zip(apis, state["urls"], strict=True):
            wait_for(lambda url=url: get(url, "/readyz").status_code == 200, 90, api)
        yield state
    finally:
        codes = [service.stop() for service in (*apis, renderer, planner)]
        cdn.stop()
    assert codes[:2] == [0, 0], [api.log()[-2000:] for api in apis]


def get(base: str, path: str, **kwargs) -> httpx.Response:
    try:
        return httpx.get(base + path, timeout=10, **kwargs)
    except httpx.TransportError:
        return httpx.Response(599)


def served_key(url: str, sku: str) -> str | None:
    response = get(url, f"/v1/skus/{sku}/video")
    return response.json()["request_key"] if response.status_code == 200 else None


def local_file(stack, video_url: str) -> Path:
    return stack["work"] / "cdn" / video_url.removeprefix(stack["cdn"].url + "/")


def assert_signed(stack, video_url: str, request_key: str) -> None:
    path = local_file(stack, video_url)
    report = read_credentials(path, trust_anchors_pem=stack["chain"].ca_pem)
    assert report.state == "Trusted", report.failures
    assert report.assertion(GENERATION_ASSERTION)["request_key"] == request_key
    assert top_level_boxes(path)[:3] == ["ftyp", "c2pa", "moov"]
    assert read_aigc(path).produce_id == request_key


def produce_products(bootstrap: str) -> None:
    base = orjson.loads(DATA.joinpath("catalog.jsonl").read_bytes().splitlines()[1])
    events = [base | {"sku": GOOD, "hot": True, "event_id": f"evt-{GOOD}", "title": HOSTILE},
              base | {"sku": BAD, "hot": True, "event_id": f"evt-{BAD}"}]
    run(produce_raw(bootstrap, PRODUCT_CREATED.name, [orjson.dumps(e) for e in events],
                    [GOOD.encode(), BAD.encode()]))


# --- two replicas racing for one video ----------------------------------------------------------------------


async def _nothing(*_: object) -> None:
    """Plans and product cards: the race's videos have none on the broker."""


@asynccontextmanager
async def _replica_desk(settings: Settings, engine: PromptEngine) -> AsyncIterator[ReviewDesk]:
    """One API replica's review desk, wired as ``skuvid serve --role api`` wires it: its own index feed (a
    consumer reading every topic from the beginning) and its own producer; yielded once caught up."""
    index = VideoIndex()
    feed = IndexFeed(settings, index)
    publisher = await Publisher.start(settings, source="urn:skuvid:api")

    async def publish(topic: Topic, event: BaseModel, key: bytes) -> object:
        headers = ce_headers(topic, event, publisher.source)
        return await publisher.publish_raw(topic.name, key, encode_value(event), headers)

    desk = ReviewDesk(settings, index, engine, publish=publish, read_planned=_nothing, read_record=_nothing,
                      is_ready=feed.is_ready)
    feeding = asyncio.create_task(feed.run(), name="index feed")
    try:
        await asyncio.wait_for(feed.caught_up.wait(), 60)
        desk.require_ready()
        yield desk
    finally:
        feeding.cancel()
        await asyncio.gather(feeding, return_exceptions=True)
        await publisher.stop()


async def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(0.02)


async def _queue_one(desks: list[ReviewDesk], engine: PromptEngine, n: int) -> str:
    """Publish the video of product ``n``; its request key once every desk has it in its queue. (Request keys
    hash what makes the video: products that differ only in their SKU would share one.)"""
    sku = f"SKU-RR{TAG}-{n}"
    [request] = plans(engine, product(sku, title=f"Race mug no. {n}"))
    await desks[0].publish(VIDEO_READY, rendered(request, at=datetime.now(UTC)), sku.encode())
    await _until(lambda: all(request.request_key in desk.book.items for desk in desks), 20, f"{sku} queued")
    return request.request_key


Seen = tuple[str, str, bool]  # a claim as a replica read it: request key, reviewer, whether it holds


def _seen(claim: ReviewClaim, held: bool) -> Seen:
    return claim.request_key, claim.reviewer, held


async def test_two_replicas_racing_for_one_video_hand_it_to_one_reviewer(review_broker):
    """Both desks choose the video before either claim is sent (gather), so both claim it every round; the
    first claim in the log wins on both replicas, the loser finds nothing else free. The winner approves, so
    the video leaves the queue of the tests that follow."""
    settings = Settings(kafka_bootstrap=review_broker.bootstrap, model="tiny", review_enabled=True,
                        review_reviewers=",".join(f"{k}:{v}" for k, v in TOKENS.items()), review_sample_rate=1.0)
    engine, reviewers = PromptEngine.load(), ("alice", "bob")
    seen: tuple[list[Seen], ...] = ([], [])  # per replica, in log order
    async with AsyncExitStack() as replicas:
        desks = [await replicas.enter_async_context(_replica_desk(settings, engine)) for _ in reviewers]
        for desk, claims in zip(desks, seen, strict=True):
            desk.book.claim_listeners.append(lambda claim, held, claims=claims: claims.append(_seen(claim, held)))
        assert not desks[0].book.available(time.time()), "a fresh broker queues nothing"
        started, winners = time.monotonic(), {}  # request key -> the reviewer who got it
        for n in range(RACE_ROUNDS):
            key = await _queue_one(desks, engine, n)
            opened = await asyncio.gather(*(desk.next_for(who) for desk, who in zip(desks, reviewers, strict=True)))
            handed = {who: (desk, got) for desk, who, got in zip(desks, reviewers, opened, strict=True) if got}
            assert len(handed) == 1, f"round {n}: the video was handed to {sorted(handed) or 'nobody'}"
            [(who, (desk, won))] = handed.items()
            assert won.item.request_key == key and won.claim.reviewer == who
            await desk.decide(who, VerdictBody(request_key=key, claim_id=won.claim.claim_id, verdict=Verdict.APPROVED))
            winners[key] = who
        elapsed = time.monotonic() - started
        await _until(lambda: all(len(claims) == 2 * RACE_ROUNDS for claims in seen), 20, "every claim read")
    assert seen[0] == seen[1]  # both replicas read the same claims in the same order and decided alike
    for key, who in winners.items():  # both claimed it: the winner's claim came first in the log
        loser = next(other for other in reviewers if other != who)
        assert [(reviewer, held) for k, reviewer, held in seen[0] if k == key] == [(who, True), (loser, False)]
    print(f"{RACE_ROUNDS} races in {elapsed:.1f} s, alice won {list(winners.values()).count('alice')}")


def test_videos_are_published_signed_and_served(stack):
    produce_products(stack["settings"].kafka_bootstrap)
    for sku in (GOOD, BAD):
        wait_for(lambda sku=sku: all(served_key(url, sku) for url in stack["urls"]), 90, *stack["services"])
    readies = {e.sku: e for e in read_all(stack["settings"].kafka_bootstrap, [VIDEO_READY.name])
               if e.sku in (GOOD, BAD)}
    for sku, ready in readies.items():
        assert_signed(stack, ready.video_url, ready.request_key)
        assert served_key(stack["urls"][0], sku) == ready.request_key
    stack["readies"] = readies


async def _review_in_the_browser(stack) -> dict:
    """bob claims over HTTP on replica 2, alice reviews on replica 1's page; then bob's video in the page."""
    first, second = stack["urls"]
    async with httpx.AsyncClient(timeout=10) as client:
        bob_held = (await client.get(second + "/review/api/next", headers=basic("bob"))).json()["video"]
    seen = {}
    async with Browser.launch(stack["work"] / "chromium") as browser:
        await browser.headers(basic("alice"))
        await browser.navigate(first + "/review")
        sku = await browser.evaluate("document.body.dataset.sku")
        key = await browser.evaluate("document.body.dataset.requestKey")
        assert key != bob_held["request_key"], (key, bob_held)  # the claim log kept them apart
        assert sku in (GOOD, BAD) and sku != bob_held["sku"], (sku, bob_held["sku"])  # and only ours are queued
        await browser.wait_for("(() => { const v = document.getElementById('video'); "
                               "return v && !v.paused && v.currentTime > 0 && v.readyState >= 2; })()",
                               30, "the video plays")
        depth = await browser.evaluate("document.getElementById('depth').textContent")
        assert "in review" in depth, depth
        await browser.screenshot(SCREENSHOT)
        seen["alice"] = await _verdict_in_page(browser, sku)
        # alice's queue is empty now (bob holds the other video); bob opens his in the same browser
        await browser.wait_for("!!document.getElementById('empty')", 15, "alice's queue is empty")
        await browser.headers(basic("bob"))
        await browser.navigate(second + "/review")
        assert await browser.evaluate("document.body.dataset.sku") == bob_held["sku"]
        seen["bob"] = await _verdict_in_page(browser, bob_held["sku"])
        assert await browser.evaluate("window.__pwned === undefined")
    return seen


async def _verdict_in_page(browser: Browser, sku: str) -> str:
    """The bad product's video rejected with shortcut 2 (visual artefacts), the good one approved by a click."""
    if sku == GOOD:
        assert await browser.evaluate("document.getElementById('title').textContent") == HOSTILE
        assert await browser.evaluate("window.__pwned === undefined")
    loads = browser.loads()
    if sku == BAD:
        await browser.press("2")
    else:
        await browser.click("#approve")
    await browser.wait_loaded(loads, 20)  # the page loads the next video after the verdict
    return sku


def test_reviewers_reject_and_approve_in_the_browser(stack):
    assert "readies" in stack, "needs the videos of the first test"
    started = time.monotonic()
    seen = asyncio.run(_review_in_the_browser(stack))
    assert set(seen.values()) == {GOOD, BAD}
    assert SCREENSHOT.stat().st_size > 10_000
    bootstrap = stack["settings"].kafka_bootstrap
    old = stack["readies"][BAD].request_key
    # the replica that took the rejection stops serving the video at once, the other one within moments
    deciding = stack["urls"][0] if seen["alice"] == BAD else stack["urls"][1]
    assert served_key(deciding, BAD) != old
    wait_for(lambda: all(served_key(url, BAD) != old for url in stack["urls"]), 10, *stack["services"])

    events = read_all(bootstrap, [VIDEO_REVIEWED.name, VIDEO_WITHDRAWN.name, VIDEO_REQUESTED_HOT.name])
    reviewed = {e.sku: e for e in events if isinstance(e, VideoReviewed) and e.sku in (GOOD, BAD)}
    assert reviewed[GOOD].verdict is Verdict.APPROVED and reviewed[BAD].verdict is Verdict.REJECTED
    assert reviewed[BAD].reason.value == "visual_artefacts"
    assert {reviewed[s].reviewer for s in (GOOD, BAD)} == {"alice", "bob"}
    assert reviewed[GOOD].product.title == HOSTILE and reviewed[BAD].request_key == old
    [withdrawn] = [e for e in events if isinstance(e, VideoWithdrawn) and e.sku == BAD]
    assert withdrawn.request_key == old and withdrawn.action is WithdrawalAction.RERENDER
    [rerender] = [e for e in events if isinstance(e, VideoRequested) and e.sku == BAD
                  and e.source_event_id == reviewed[BAD].event_id]
    assert rerender.request_key == withdrawn.rerender.request_key != old
    stack["rerender"] = rerender
    stack["reviewed"] = reviewed
    print(f"browser review took {time.monotonic() - started:.1f} s")


def test_the_rerender_is_served_signed_and_queued_for_review(stack):
    rerender = stack["rerender"]
    wait_for(lambda: all(served_key(url, BAD) == rerender.request_key for url in stack["urls"]), 90,
             *stack["services"])
    ready = next(e for e in read_all(stack["settings"].kafka_bootstrap, [VIDEO_READY.name])
                 if e.request_key == rerender.request_key)
    assert ready.provenance.seed == rerender.params.seed
    assert_signed(stack, ready.video_url, rerender.request_key)
    nxt = get(stack["urls"][0], "/review/api/next", headers=basic("alice")).json()["video"]
    assert nxt["request_key"] == rerender.request_key and "rerender" in nxt["causes"]
    assert served_key(stack["urls"][0], GOOD) == stack["readies"][GOOD].request_key  # approved: still served


def test_report_and_export_count_the_verdicts(stack, tmp_path):
    report = get(stack["urls"][1], "/v1/review/report", headers=basic("bob")).json()
    assert report["overall"]["n"] >= 2
    reasons = {r["reason"]: r["count"] for r in report["reject_reasons"]}
    assert reasons.get("visual_artefacts", 0) >= 1
    today = datetime.now(UTC).date().isoformat()
    env = {**os.environ, **as_env(stack["settings"])}
    done = subprocess.run([sys.executable, "-m", "skuvid.cli", "review", "export", "--since", today, "--out",
                           str(tmp_path)], capture_output=True, env=env, cwd=REPO_ROOT, timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    summary = orjson.loads(done.stdout)
    rows = {row["sku"]: row for name in ("approved.jsonl", "rejected.jsonl")
            for row in map(orjson.loads, (tmp_path / name).read_bytes().splitlines())}
    assert rows[GOOD]["verdict"] == "approved" and rows[BAD]["verdict"] == "rejected"
    assert rows[BAD]["reason"] == "visual_artefacts" and rows[GOOD]["product"]["title"] == HOSTILE
    assert summary["approved"] >= 1 and summary["rejected"] >= 1 and (tmp_path / "README.md").is_file()
