"""The review desk without a broker: an in-memory log that every replica's index reads in order, real planner
output, the HTTP routes over ASGI. Sampling, claims, verdicts, withdrawal with re-render or refusal, the
page's escaping and authentication, the report and the export on seeded verdicts."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import zlib
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest
from statsmodels.stats.proportion import proportion_confint

from api.app import create_app
from api.index import VideoIndex
from api.service import ApiService
from review.auth import Reviewers
from review.book import ReviewBook
from review.desk import RECONCILE_GRACE_S, ReviewDesk, VerdictBody, style_of
from review.export import export_examples
from review.feedback import FeedbackPolicy, rerender_seed, withdrawal
from review.page import esc, safe_url
from review.report import build_report, render_html, render_text, report_json, rows_from
from review.sampling import SamplingPolicy, draw, stratum_of
from schemas.codec import decode, encode_value
from schemas.events import (
    Lane,
    QualityReport,
    RejectReason,
    ReviewCause,
    ReviewedProduct,
    Verdict,
    VideoReviewed,
    WithdrawalAction,
)
from schemas.topics import (
    PRODUCT_CREATED,
    PRODUCT_UPDATED,
    REVIEW_CLAIMS,
    VIDEO_PLANNED,
    VIDEO_READY,
    VIDEO_REQUESTED_HOT,
    VIDEO_REVIEWED,
    VIDEO_WITHDRAWN,
)
from skuvid.errors import FatalError
from skuvid.settings import Settings
from tests.unit.test_api_index import T0, engine, planned, plans, product, ready  # noqa: F401 - fixture

TOKENS = {"alice": "alice-token-1", "bob": "bob-token-22"}
REVIEWERS = ",".join(f"{k}:{v}" for k, v in TOKENS.items())


def settings(**overrides) -> Settings:
    values = {"model": "tiny", "review_enabled": True, "review_reviewers": REVIEWERS, "review_sample_rate": 0.0,
              "review_min_per_stratum": 0, "review_new_template_first": 0, "review_lease_s": 60.0}
    return Settings(**(values | overrides))


class Clock:
    def __init__(self) -> None:
        self.now = T0.timestamp()

    def __call__(self) -> float:
        return self.now


class Log:
    """Kafka in memory: records by topic and partition; every replica's index reads them in order, soon after
    each publish (the replicas' feeds)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, int, int, object]] = []  # (topic, partition, offset, event) in log order
        self.ends: dict[tuple[str, int], int] = {}
        self.replicas: list[list] = []  # [index, cursor]
        self.down = False

    def add(self, topic, event, key: bytes) -> tuple[int, int]:
        partition = zlib.crc32(key) % topic.partitions
        offset = self.ends.get((topic.name, partition), 0)
        self.ends[(topic.name, partition)] = offset + 1
        self.records.append((topic.name, partition, offset, decode(topic, encode_value(event))))  # the wire
        return partition, offset

    async def publish(self, topic, event, key: bytes):
        if self.down:
            raise ConnectionError("broker down")
        partition, offset = self.add(topic, event, key)
        asyncio.get_running_loop().call_soon(self.pump)

        class Meta:
            pass

        Meta.partition, Meta.offset = partition, offset
        return Meta

    def pump(self) -> None:
        for replica in self.replicas:
            index, cursor = replica
            for topic, partition, offset, event in self.records[cursor:]:
                index.apply(topic, event, partition, offset)
            replica[1] = len(self.records)

    def replica(self, index: VideoIndex) -> None:
        self.replicas.append([index, 0])
        self.pump()

    def of(self, topic) -> list:
        return [event for name, _, _, event in self.records if name == topic.name]

    async def read_planned(self, partition: int, offset: int):
        return self.read(VIDEO_PLANNED.name, partition, offset)

    async def read_record(self, topic: str, partition: int, offset: int):
        return self.read(topic, partition, offset)

    def read(self, topic: str, partition: int, offset: int):
        return next((e for t, p, o, e in self.records if (t, p, o) == (topic, partition, offset)), None)


@pytest.fixture
def world(engine):  # noqa: F811
    """A log and two replicas (index + desk each) with one shared clock."""
    log, clock = Log(), Clock()

    def replica(**overrides):
        index = VideoIndex()
        desk = ReviewDesk(settings(**overrides), index, engine, publish=log.publish, read_planned=log.read_planned,
                          read_record=log.read_record, clock=clock)
        log.replica(index)
        return index, desk

    return {"log": log, "clock": clock, "replica": replica}


def publish_video(log: Log, engine, sku: str, *, variants: int = 1, flagged: bool = False, at=T0,  # noqa: F811
                  **changes) -> list:
    """product.created -> plans on video.planned -> video.ready, as the planner and renderer would."""
    event = product(sku, **changes)
    log.add(PRODUCT_CREATED, event, sku.encode())
    requests = plans(engine, event, variants=variants)
    for i, request in enumerate(requests):
        log.add(VIDEO_PLANNED, planned(request, dispatched=True), f"{sku}|{request.variant_id}".encode())
        video = ready(request, at=at + timedelta(seconds=i))
        if flagged:
            video = video.model_copy(update={"quality": QualityReport(passed=False, attempts=2, flagged=True,
                                                                      scores={"motion": 0.1})})
        log.add(VIDEO_READY, video, sku.encode())
    log.pump()
    return requests


def run(coro):
    return asyncio.run(coro)


# --- sampling ---------------------------------------------------------------------------------------------


def test_which_videos_are_queued_and_why(world, engine):  # noqa: F811
    index, desk = world["replica"](review_new_template_first=2)
    log = world["log"]
    publish_video(log, engine, "SKU-F1", flagged=True)
    for n in range(4):
        publish_video(log, engine, f"SKU-N{n}", at=T0 + timedelta(minutes=n))
    desk.require_ready()
    causes = {item.ready.sku: item.causes for item in desk.book.items.values()}
    # the flagged one, and the first two renders of the template version (by render time)
    assert causes["SKU-F1"] >= {ReviewCause.FLAGGED}
    new = sorted(sku for sku, c in causes.items() if ReviewCause.NEW_TEMPLATE in c)
    assert len(new) == 2 and "SKU-N3" not in causes
    # the flagged video goes first
    assert desk.book.available(world["clock"]())[0].ready.sku == "SKU-F1"


def test_sample_is_stratified_reproducible_and_has_a_floor(engine):  # noqa: F811
    policy = SamplingPolicy(rate=0.1, min_per_stratum=1, new_template_first=0)
    keys = [f"{n:064x}" for n in range(4000)]
    for stratum in ("3c|3c", "kitchen|kitchen"):
        share = sum(policy.sampled(k, stratum) for k in keys) / len(keys)
        assert 0.085 < share < 0.115
    assert [draw(k, "3c|3c") for k in keys[:5]] == [draw(k, "3c|3c") for k in keys[:5]]
    assert stratum_of(" 3C ", "3c") == "3c|3c" and stratum_of(None, "generic") == "unknown|generic"
    # rate 0: only the first render of each stratum (the floor) is sampled
    log, index = Log(), VideoIndex()
    book = ReviewBook(SamplingPolicy(rate=0.0, min_per_stratum=1, new_template_first=0), index)
    index.observe(book)
    log.replica(index)
    publish_video(log, engine, "SKU-S1", at=T0 + timedelta(minutes=5))
    publish_video(log, engine, "SKU-S2", at=T0)  # read later, rendered earlier: it displaces SKU-S1
    assert {i.ready.sku for i in book.items.values()} == {"SKU-S2"}


def test_every_replica_builds_the_same_queue_whatever_the_read_order(engine):  # noqa: F811
    log = Log()
    for n in range(6):
        publish_video(log, engine, f"SKU-O{n}", at=T0 + timedelta(minutes=(n * 7) % 5), flagged=n == 4)
    policy = SamplingPolicy(rate=0.3, min_per_stratum=1, new_template_first=2)
    books = []
    for order in (log.records, list(reversed(log.records))):
        index = VideoIndex()
        book = ReviewBook(policy, index)
        index.observe(book)
        for topic, partition, offset, event in order:
            index.apply(topic, event, partition, offset)
        book.settle()
        books.append({k: item.causes for k, item in book.items.items()})
    assert books[0] == books[1] and books[0]


def test_on_demand_renders_are_not_reviewed(world, engine):  # noqa: F811
    index, desk = world["replica"](review_sample_rate=1.0)
    [request] = publish_video(world["log"], engine, "SKU-OD1")
    ondemand = ready(request).model_copy(update={"variant_id": "ondemand-" + "0" * 24, "request_key": "e" * 64})
    world["log"].add(VIDEO_READY, ondemand, b"x")
    world["log"].pump()
    assert {i.ready.variant_id for i in desk.book.items.values()} == {"daily-a"}


# --- claims -----------------------------------------------------------------------------------------------


def test_two_replicas_never_hand_one_video_to_two_reviewers(world, engine):  # noqa: F811
    (_, a), (_, b) = world["replica"](review_sample_rate=1.0), world["replica"](review_sample_rate=1.0)
    publish_video(world["log"], engine, "SKU-C1")
    publish_video(world["log"], engine, "SKU-C2", at=T0 + timedelta(minutes=1))

    async def both():
        return await asyncio.gather(a.next_for("alice"), b.next_for("bob"))

    alice, bob = run(both())
    assert {alice.item.ready.sku, bob.item.ready.sku} == {"SKU-C1", "SKU-C2"}
    # reloading (on either replica) gives each reviewer the video they hold
    assert run(b.next_for("alice")).item.request_key == alice.item.request_key
    # nothing else is free until a lease runs out
    assert run(a.next_for("carol")) is None
    world["clock"].now += 61
    assert run(a.next_for("carol")).item.request_key in {alice.item.request_key, bob.item.request_key}
    assert a.depth() == b.depth() == (1, 1)


# --- verdicts and feedback --------------------------------------------------------------------------------


def test_approval_is_published_with_what_the_reviewer_saw(world, engine):  # noqa: F811
    index, desk = world["replica"](review_sample_rate=1.0)
    [request] = publish_video(world["log"], engine, "SKU-A1")
    opened = run(desk.next_for("alice"))
    assert opened.product.selling_points and opened.request == request and opened.style
    outcome = run(desk.decide("alice", VerdictBody(request_key=request.request_key, claim_id=opened.claim.claim_id,
                                                   verdict=Verdict.APPROVED)))
    assert outcome.withdrawn is None
    [reviewed] = world["log"].of(VIDEO_REVIEWED)
    assert reviewed.reviewer == "alice" and reviewed.verdict is Verdict.APPROVED and reviewed.reason is None
    assert reviewed.event_id == f"review-{opened.claim.claim_id}"
    assert (reviewed.template_id, reviewed.template_version) == (request.prompt.template_id,
                                                                 request.prompt.template_version)
    assert reviewed.product.title == product("SKU-A1").title and reviewed.category == product("SKU-A1").category
    assert reviewed.seed == request.params.seed and reviewed.prompt == request.prompt.positive
    assert index.lookup("SKU-A1", now=world["clock"]()).request_key == request.request_key  # still served
    assert run(desk.next_for("alice")) is None  # reviewed once
    with pytest.raises(Exception, match="already") as info:
        run(desk.decide("bob", VerdictBody(request_key=request.request_key, claim_id=opened.claim.claim_id,
                                           verdict=Verdict.REJECTED, reason=RejectReason.UNSAFE)))
    assert info.value.status == 409


def test_rejection_withdraws_at_once_and_rerenders_with_a_new_seed(world, engine):  # noqa: F811
    (index, desk), (other, _) = world["replica"](review_sample_rate=1.0), world["replica"](review_sample_rate=1.0)
    requests = publish_video(world["log"], engine, "SKU-R1", variants=2)
    now = world["clock"]()
    served = index.lookup("SKU-R1", now=now)
    opened = run(desk.next_for("alice"))
    while opened.item.request_key != served.request_key:  # review the one the listing plays
        run(desk.decide("alice", VerdictBody(request_key=opened.item.request_key, claim_id=opened.claim.claim_id,
                                             verdict=Verdict.APPROVED)))
        opened = run(desk.next_for("alice"))
    outcome = run(desk.decide("alice", VerdictBody(
        request_key=served.request_key, claim_id=opened.claim.claim_id, verdict=Verdict.REJECTED,
        reason=RejectReason.VISUAL_ARTEFACTS)))
    withdrawn = outcome.withdrawn
    assert withdrawn.action is WithdrawalAction.RERENDER and withdrawn.rerender_generation == 1
    # this replica no longer serves it the moment the answer returns: the other variant is served
    fallback = index.lookup("SKU-R1", now=now)
    assert fallback.request_key != served.request_key and fallback.request_key in {r.request_key for r in requests}
    world["log"].pump()
    assert other.lookup("SKU-R1", now=now).request_key == fallback.request_key
    # the re-render: same prompt and variant, new seed and key, hot lane, caused by the verdict
    [rerender] = world["log"].of(VIDEO_REQUESTED_HOT)
    original = next(r for r in requests if r.request_key == served.request_key)
    assert rerender == withdrawn.rerender and rerender.lane is Lane.HOT
    assert rerender.request_key != original.request_key and rerender.params.seed != original.params.seed
    assert rerender.prompt == original.prompt and rerender.variant_id == original.variant_id
    assert rerender.source_event_id == outcome.reviewed.event_id
    assert world["log"].of(VIDEO_WITHDRAWN) == [withdrawn]
    # its video is served once ready, and is queued for review as a re-render
    world["log"].add(VIDEO_READY, ready(rerender, at=T0 + timedelta(minutes=3)), b"SKU-R1")
    world["log"].pump()
    assert index.lookup("SKU-R1", user=None, now=now).request_key in {rerender.request_key, fallback.request_key}
    assert desk.book.items[rerender.request_key].causes >= {ReviewCause.RERENDER}
    assert desk.book.generation(rerender.request_key) == 1


def test_a_wrong_product_refuses_the_sku_until_its_data_changes(world, engine):  # noqa: F811
    index, desk = world["replica"](review_sample_rate=1.0)
    publish_video(world["log"], engine, "SKU-W1")
    opened = run(desk.next_for("alice"))
    outcome = run(desk.decide("alice", VerdictBody(request_key=opened.item.request_key,
                                                   claim_id=opened.claim.claim_id, verdict=Verdict.REJECTED,
                                                   reason=RejectReason.WRONG_PRODUCT)))
    assert outcome.withdrawn.action is WithdrawalAction.REFUSE and outcome.withdrawn.rerender is None
    assert world["log"].of(VIDEO_REQUESTED_HOT) == []
    miss = index.lookup("SKU-W1", now=world["clock"]())
    assert (miss.status, miss.reason) == ("refused", "review_rejected")
    # the product changes: a new plan and video are served again
    changed = product("SKU-W1", title="手冲咖啡壶 不锈钢 600ml", event_id="evt-SKU-W1-2",
                      occurred_at=(T0 + timedelta(hours=1)).isoformat())
    [request] = plans(engine, changed)
    request = request.model_copy(update={"occurred_at": T0 + timedelta(hours=2)})  # planned after the refusal
    world["log"].add(PRODUCT_UPDATED, changed, b"SKU-W1")
    world["log"].add(VIDEO_PLANNED, planned(request, dispatched=True), b"SKU-W1|daily-a")
    world["log"].add(VIDEO_READY, ready(request), b"SKU-W1")
    world["log"].pump()
    assert index.lookup("SKU-W1", now=world["clock"]()).request_key == request.request_key


def test_rerenders_are_bounded_then_the_product_is_refused(world, engine):  # noqa: F811
    index, desk = world["replica"](review_sample_rate=1.0, review_max_rerenders=1)
    publish_video(world["log"], engine, "SKU-B1")
    actions = []
    for n in range(2):
        opened = run(desk.next_for("alice"))
        outcome = run(desk.decide("alice", VerdictBody(request_key=opened.item.request_key,
                                                       claim_id=opened.claim.claim_id, verdict=Verdict.REJECTED,
                                                       reason=RejectReason.GARBLED_TEXT)))
        actions.append(outcome.withdrawn.action)
        if outcome.withdrawn.rerender:
            world["log"].add(VIDEO_READY, ready(outcome.withdrawn.rerender, at=T0 + timedelta(minutes=n + 1)),
                             b"SKU-B1")
            world["log"].pump()
    assert actions == [WithdrawalAction.RERENDER, WithdrawalAction.REFUSE]
    assert [r.rerender_generation for r in world["log"].of(VIDEO_REVIEWED)] == [0, 1]
    assert index.lookup("SKU-B1", now=world["clock"]()).status == "refused"


def test_verdicts_need_the_running_lease_of_the_reviewer(world, engine):  # noqa: F811
    _, desk = world["replica"](review_sample_rate=1.0)
    publish_video(world["log"], engine, "SKU-L1")
    opened = run(desk.next_for("alice"))
    body = VerdictBody(request_key=opened.item.request_key, claim_id=opened.claim.claim_id, verdict=Verdict.APPROVED)
    for who, advance in (("bob", 0), ("alice", 61)):
        world["clock"].now += advance
        with pytest.raises(Exception, match="no longer yours") as info:
            run(desk.decide(who, body))
        assert info.value.status == 409
    assert world["log"].of(VIDEO_REVIEWED) == []


def test_a_rejection_left_without_withdrawal_is_completed_by_any_replica(world, engine):  # noqa: F811
    (index, desk), (_, other) = world["replica"](review_sample_rate=1.0), world["replica"](review_sample_rate=1.0)
    publish_video(world["log"], engine, "SKU-X1")
    publish_video(world["log"], engine, "SKU-X2", at=T0 + timedelta(minutes=1))
    opened = run(desk.next_for("alice"))
    world["log"].down = True  # the verdict is sent, the broker goes away before the withdrawal
    sent = []
    real = world["log"].publish

    async def once(topic, event, key):
        if topic is VIDEO_REVIEWED:
            world["log"].down = False
            result = await real(topic, event, key)
            world["log"].down = True
            sent.append(event)
            return result
        return await real(topic, event, key)

    desk.publish = once
    outcome = run(desk.decide("alice", VerdictBody(request_key=opened.item.request_key,
                                                   claim_id=opened.claim.claim_id, verdict=Verdict.REJECTED,
                                                   reason=RejectReason.UNSAFE)))
    assert outcome.withdrawn is None and sent
    world["log"].down = False
    assert run(other.reconcile()) == 0  # within the grace period the deciding replica may still send it
    world["clock"].now += RECONCILE_GRACE_S + 1
    run(other.next_for("bob"))
    [withdrawn] = world["log"].of(VIDEO_WITHDRAWN)
    assert withdrawn.request_key == opened.item.request_key and withdrawn.action is WithdrawalAction.REFUSE
    world["log"].pump()
    assert index.lookup(opened.item.ready.sku, now=world["clock"]()).status == "refused"


def test_the_index_never_serves_a_withdrawn_video_whatever_the_read_order(engine):  # noqa: F811
    [request] = plans(engine, product("SKU-I1"))
    reviewed = seeded_verdict(7, verdict=Verdict.REJECTED, reason=RejectReason.VISUAL_ARTEFACTS,
                              request_key=request.request_key)
    event = withdrawal(reviewed.model_copy(update={"sku": "SKU-I1"}), request, generation=0,
                       policy=FeedbackPolicy.from_settings(settings()), now=T0)
    records = [("video.planned", planned(request, dispatched=True)), ("video.ready", ready(request)),
               ("video.withdrawn", event)]
    for order in (records, records[::-1], [records[2], records[0], records[1]]):
        index = VideoIndex()
        for topic, record in order:
            index.apply(topic, record, 0, 0)
        miss = index.lookup("SKU-I1", now=T0.timestamp())
        assert (miss.status, miss.reason) == ("pending", "rerender_queued")
        index.apply("video.ready", ready(event.rerender, at=T0 + timedelta(minutes=1)), 0, 0)
        assert index.lookup("SKU-I1", now=T0.timestamp()).request_key == event.rerender.request_key


def test_feedback_is_deterministic(engine):  # noqa: F811
    [request] = plans(engine, product("SKU-D1"))
    reviewed = seeded_verdict(0, verdict=Verdict.REJECTED, reason=RejectReason.OTHER, note="flicker",
                              request_key=request.request_key)
    policy = FeedbackPolicy.from_settings(settings())
    first = withdrawal(reviewed, request, generation=0, policy=policy, now=T0)
    again = withdrawal(reviewed, request, generation=0, policy=policy, now=T0 + timedelta(hours=1))
    assert first.rerender.request_key == again.rerender.request_key and first.event_id == again.event_id
    assert first.rerender.params.seed == rerender_seed(request.request_key, 1) != request.params.seed
    assert withdrawal(reviewed, None, generation=0, policy=policy, now=T0).action is WithdrawalAction.WITHDRAW
    with pytest.raises(FatalError, match="unknown reasons"):
        FeedbackPolicy.from_settings(settings(review_rerender_reasons=("blurry",)))


def test_style_is_read_from_the_prompt(engine):  # noqa: F811
    for line in (0, 1):
        for request in plans(engine, product("SKU-ST", line=line), variants=3):
            key = style_of(engine, request.prompt.positive)
            assert key in engine.selector.styles
            assert engine.selector.styles[key].get(request.prompt.language).casefold() in \
                request.prompt.positive.casefold()


# --- HTTP: authentication, the page, the routes ----------------------------------------------------------

HOSTILE = '<script>window.__pwned=1</script>Mug "quoted" & <b>bold</b>'


@pytest.fixture
def http(world, engine):  # noqa: F811
    log, clock = world["log"], world["clock"]
    index = VideoIndex()
    service = ApiService(settings(review_sample_rate=1.0), index, engine, publish=log.publish,
                         read_planned=log.read_planned, committed=_nothing, clock=clock)
    service.review.read_record = log.read_record
    log.replica(index)
    return {"app": create_app(service), "service": service, "log": log}


async def _nothing():
    return {}


def call(app, method: str, url: str, **kwargs) -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.request(method, url, **kwargs)

    return run(go())


def basic(reviewer: str) -> dict[str, str]:
    token = base64.b64encode(f"{reviewer}:{TOKENS[reviewer]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_review_routes_need_a_reviewer(http):
    for path in ("/review", "/review/api/next", "/v1/review/report"):
        response = call(http["app"], "GET", path)
        assert response.status_code == 401 and response.json()["reason"] == "auth_required"
        assert response.headers["www-authenticate"].startswith("Basic")
    wrong = base64.b64encode(b"alice:bob-token-22").decode()
    assert call(http["app"], "GET", "/review", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    assert call(http["app"], "GET", "/review", headers={"Authorization": "Bearer nope"}).status_code == 401
    bearer = {"Authorization": f"Bearer {TOKENS['bob']}"}
    assert call(http["app"], "GET", "/review/api/next", headers=bearer).json()["reviewer"] == "bob"


def test_page_escapes_every_product_field(http, engine):  # noqa: F811
    publish_video(http["log"], engine, "SKU-P1", title=HOSTILE, brand='<img src=x onerror="alert(1)">',
                  selling_points=["<i>soft</i>", "x</li><script>1</script>"],
                  image_url='javascript:alert("x")')
    response = call(http["app"], "GET", "/review", headers=basic("alice"))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert esc(HOSTILE) in page and HOSTILE not in page
    assert "<script>window.__pwned" not in page and "<img src=x" not in page and "<i>soft</i>" not in page
    assert not re.search(r'(src|href|poster)="javascript', page, re.I)  # shown as text only, never as a URL
    nonce = re.search(r"script-src 'nonce-([^']+)'", response.headers["content-security-policy"]).group(1)
    assert re.findall(r"<script[^>]*>", page) == [f'<script nonce="{nonce}">']
    assert 'id="video"' in page and "queue: 0 waiting · 1 in review" in page


def test_verdict_over_http_and_the_report(http, engine):  # noqa: F811
    requests = publish_video(http["log"], engine, "SKU-H1", variants=2)
    body = call(http["app"], "GET", "/review/api/next", headers=basic("alice")).json()
    video = body["video"]
    assert body["waiting"] == 1 and body["in_review"] == 1 and video["sku"] == "SKU-H1"
    verdict = {"request_key": video["request_key"], "claim_id": video["claim_id"], "verdict": "rejected",
               "reason": "other", "note": ""}
    refused = call(http["app"], "POST", "/review/api/verdict", json=verdict, headers=basic("alice"))
    assert refused.status_code == 422 and refused.json()["reason"] == "schema_violation"
    form = call(http["app"], "POST", "/review/api/verdict", content=json.dumps(verdict | {"note": "x"}),
                headers={**basic("alice"), "content-type": "text/plain"})
    assert form.status_code == 422  # JSON only: a cross-site form cannot post a verdict
    taken = call(http["app"], "POST", "/review/api/verdict", json=verdict | {"note": "x"}, headers=basic("bob"))
    assert taken.status_code == 409 and taken.json()["reason"] == "claim_lost"
    done = call(http["app"], "POST", "/review/api/verdict", json=verdict | {"note": "halo around the cup"},
                headers=basic("alice"))
    assert done.status_code == 200, done.text
    answer = done.json()
    assert answer["withdrawn"] and answer["action"] == "rerender" and answer["rerender_request_key"]
    assert answer["rerender_request_key"] not in {r.request_key for r in requests}
    report = call(http["app"], "GET", "/v1/review/report", headers=basic("bob")).json()
    assert report["overall"]["n"] == 1 and report["reject_reasons"] == [{"reason": "other", "count": 1,
                                                                           "share": 1.0}]
    chart = call(http["app"], "GET", "/v1/review/report?format=html&since=2020-01-01", headers=basic("bob"))
    assert chart.status_code == 200 and "<svg" in chart.text


def test_review_off_answers_404(engine):  # noqa: F811
    service = ApiService(Settings(model="tiny"), VideoIndex(), engine, publish=None, read_planned=None,
                         committed=_nothing)
    assert service.review is None
    response = call(create_app(service), "GET", "/review")
    assert response.status_code == 404 and response.json()["reason"] == "review_disabled"


def test_reviewers_are_checked_at_start_up():
    with pytest.raises(FatalError, match="names no reviewer"):
        Reviewers.parse(None)
    with pytest.raises(FatalError, match="entry 2"):
        Reviewers.parse(settings(review_reviewers="alice:long-enough,bob:short").review_reviewers)
    reviewers = Reviewers.parse(settings().review_reviewers)
    assert reviewers.identify(f"Bearer {TOKENS['alice']}") == "alice" and reviewers.identify("Basic !!") is None
    assert safe_url("https://cdn/x.mp4") and safe_url("file:/x.mp4") is None and safe_url("JavaScript:1") is None


# --- report and export on seeded verdicts -----------------------------------------------------------------

SEED = [  # (template, style, category, model, approved, rejected, reasons of the rejected)
    ("3c", "tech", "3c", "wan", 18, 2, ["visual_artefacts", "garbled_text"]),
    ("kitchen", "cozy_home", "kitchen", "wan", 6, 4, ["wrong_product", "visual_artefacts", "visual_artefacts",
                                                        "off_brand"]),
    ("3c", "minimal", "digital", "tiny", 1, 1, ["visual_artefacts"]),
]


def seeded_verdict(n: int, *, verdict=Verdict.APPROVED, reason=None, note="", template="3c", style="tech",
                   category="3c", model="wan", request_key: str | None = None,
                   at: datetime = T0) -> VideoReviewed:
    return VideoReviewed(
        event_id=f"review-{n:032x}", occurred_at=at, request_key=request_key or f"{n:064x}", sku=f"SKU-{n}",
        variant_id="daily-a", verdict=verdict, reason=reason, note=note, reviewer="alice", claim_id=f"{n:032x}",
        causes=[ReviewCause.SAMPLED], template_id=template, template_version=1, style=style, category=category,
        model=model, seed=n, prompt=f"prompt {n}", product=ReviewedProduct(title=f"title {n}", selling_points=["a"]),
        video_url=f"https://cdn/{n}.mp4", poster_url=f"https://cdn/{n}.jpg",
        quality=QualityReport(passed=True, attempts=1, scores={"motion": 0.5}), rendered_at=at,
    )


def seeded() -> list[VideoReviewed]:
    events, n = [], 0
    for template, style, category, model, approved, rejected, reasons in SEED:
        for i in range(approved + rejected):
            n += 1
            extra = {"verdict": Verdict.REJECTED, "reason": RejectReason(reasons[i - approved])} if i >= approved \
                else {}
            events.append(seeded_verdict(n, template=template, style=style, category=category, model=model,
                                         at=T0 + timedelta(days=i % 3), **extra))
    events.append(seeded_verdict(1, verdict=Verdict.REJECTED, reason=RejectReason.UNSAFE))  # a late duplicate
    return events


def test_report_rates_with_wilson_intervals_and_top_reasons():
    report = build_report(rows_from(seeded()))
    assert (report.overall.n, report.overall.approved) == (32, 25)
    by_template = {r.value: r for r in report.by["template"]}
    assert (by_template["3c"].n, by_template["3c"].approved) == (22, 19)
    assert (by_template["kitchen"].n, by_template["kitchen"].approved) == (10, 6)
    low, high = proportion_confint(19, 22, alpha=0.05, method="wilson")
    assert (by_template["3c"].low, by_template["3c"].high) == pytest.approx((low, high))
    assert by_template["kitchen"].rate == pytest.approx(0.6)
    assert {r.value: (r.n, r.approved) for r in report.by["model"]} == {"wan": (30, 24), "tiny": (2, 1)}
    assert {r.value: r.n for r in report.by["style"]} == {"tech": 20, "cozy_home": 10, "minimal": 2}
    assert {r.value: r.n for r in report.by["category"]} == {"3c": 20, "kitchen": 10, "digital": 2}
    assert [(r.reason, r.count) for r in report.reasons][:2] == [("visual_artefacts", 4), ("garbled_text", 1)]
    assert sum(r.count for r in report.reasons) == 7
    data = report_json(report)
    assert data["overall"]["ci95"][0] < 25 / 32 < data["overall"]["ci95"][1]
    assert "visual_artefacts" in render_text(report) and "78.1%" in render_text(report)
    page = render_html(report)
    assert page.count('data-chart="rate-') == 5 and 'data-chart="reasons"' in page
    since = rows_from(seeded(), since=T0 + timedelta(days=2))
    assert len(since) == 9  # day 2: i % 3 == 2 in groups of 20, 10 and 2


def test_export_writes_both_sets_and_a_dataset_card(tmp_path):
    events = seeded()
    summary = export_examples(events, tmp_path, since=T0 + timedelta(days=1))
    approved = [json.loads(line) for line in (tmp_path / "approved.jsonl").read_text().splitlines()]
    rejected = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    expected = [e for e in rows_from(events, since=T0 + timedelta(days=1))]
    assert (summary.approved, summary.rejected) == (len(approved), len(rejected))
    assert len(approved) + len(rejected) == len(expected) == 20
    row = rejected[0]
    assert row["verdict"] == "rejected" and row["reason"] and row["prompt"].startswith("prompt")
    assert row["product"]["title"].startswith("title") and row["video_url"].startswith("https://cdn/")
    assert row["quality"]["scores"] == {"motion": 0.5} and row["causes"] == ["sampled"]
    card = (tmp_path / "README.md").read_text()
    assert "approved.jsonl" in card and "How it was sampled" in card and f"Examples: {len(expected)}" in card
    assert date(2026, 12, 2).isoformat() in card
