"""The review desk: hand reviewers the next video, record verdicts, and publish what a rejection causes.

Kafka is reached only through injected callables (like ``api.service``), so tests drive this with fakes:
``publish(topic, event, key)`` (acknowledged send), ``read_planned(partition, offset)`` (the video's plan,
``api.planned``) and ``read_record(topic, partition, offset)`` (its product card, ``review.records``).

* ``next_for(reviewer)`` — the video this reviewer already holds, else claims the first free one: publishes
  a ``ReviewClaim`` and waits until this replica's feed reads it back, when the book says whether it holds
  (the first claim in the log wins); a lost claim tries the next video.
* ``decide(reviewer, verdict)`` — only the holder of a running lease may; publishes ``video.reviewed``
  (carrying what the reviewer saw), then for a rejection the re-render request (hot lane) and
  ``video.withdrawn``, and applies the withdrawal to this replica's index at once: the listing stops serving
  the video before the answer returns; the other replicas when they read it (milliseconds).
* A rejection whose withdrawal never appeared (the deciding replica died in between) is completed by
  whichever replica runs ``next_for`` later (``reconcile``): the feedback events are deterministic, so doing it
  twice changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from api.errors import ApiProblem
from api.index import VideoIndex
from inference.prompt import PromptEngine
from review.auth import Reviewers
from review.book import PRIORITY, Claim, Item, ReviewBook
from review.feedback import FeedbackPolicy, withdrawal
from review.records import RecordReader
from review.sampling import SamplingPolicy
from schemas.events import (
    REVIEW_EVENT_PREFIX,
    ClaimId,
    ProductCreated,
    RejectReason,
    ReviewClaim,
    ReviewedProduct,
    Sha256Hex,
    Verdict,
    VideoPlanned,
    VideoRequested,
    VideoReviewed,
    VideoWithdrawn,
)
from schemas.topics import (
    PRODUCT_CREATED,
    PRODUCT_UPDATED,
    REVIEW_CLAIMS,
    VIDEO_REQUESTED_HOT,
    VIDEO_REVIEWED,
    VIDEO_WITHDRAWN,
    Topic,
)
from skuvid.settings import Settings

log = logging.getLogger(__name__)

Publish = Callable[[Topic, BaseModel, bytes], Awaitable[object]]
ReadPlanned = Callable[[int, int], Awaitable[VideoPlanned | None]]
ReadRecord = Callable[[str, int, int], Awaitable[BaseModel | None]]
CLAIM_TRIES = 8  # lost claims in a row (others took those videos) before answering "nothing free"
OPENED_CACHE = 512
RECONCILE_GRACE_S = 30.0  # a rejection this old without its withdrawal is completed by any replica
RECONCILE_EVERY_S = 10.0


@dataclass(frozen=True)
class Opened:
    """A video a reviewer holds, with everything the page shows."""

    item: Item
    claim: Claim
    request: VideoRequested | None  # None: the plan was superseded (no re-render possible)
    product: ReviewedProduct
    style: str | None
    waiting: int = 0  # queue depth when opened: videos nobody holds …
    in_review: int = 0  # … and videos reviewers hold


@dataclass(frozen=True)
class Outcome:
    reviewed: VideoReviewed
    withdrawn: VideoWithdrawn | None


class VerdictBody(BaseModel):
    """``POST /review/api/verdict``: the holder's verdict on the video it holds (the reviewer comes from the
    credentials, never from the body)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_key: Sha256Hex
    claim_id: ClaimId
    verdict: Verdict
    reason: RejectReason | None = Field(default=None, description="Required to reject, absent to approve.")
    note: Annotated[str, StringConstraints(max_length=500)] = Field(default="", description="Required for other.")

    @model_validator(mode="after")
    def _reason_matches_verdict(self) -> VerdictBody:
        if (self.verdict is Verdict.REJECTED) != (self.reason is not None):
            raise ValueError("reject with a reason, approve without one")
        if self.reason is RejectReason.OTHER and not self.note.strip():
            raise ValueError("reason other needs a note")
        return self


def style_of(engine: PromptEngine, prompt: str) -> str | None:
    """The curated style a positive prompt opens with (the engine puts the style phrase first)."""
    head, best = prompt[:80].casefold(), None
    for key, style in engine.selector.styles.items():
        for text in (style.zh, style.en):
            if text and head.startswith(text.casefold()) and (best is None or len(text) > best[1]):
                best = (key, len(text))
    return best[0] if best else None


class ReviewDesk:
    def __init__(self, settings: Settings, index: VideoIndex, engine: PromptEngine, *, publish: Publish,
                 read_planned: ReadPlanned, read_record: ReadRecord | None = None,
                 is_ready: Callable[[], bool] = lambda: True, clock: Callable[[], float] = time.time,
                 claim_timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.index = index
        self.engine = engine
        self.publish = publish
        self.read_planned = read_planned
        self._reader = RecordReader(settings, (PRODUCT_CREATED, PRODUCT_UPDATED)) if read_record is None else None
        self.read_record: ReadRecord = read_record or self._reader.read  # type: ignore[union-attr]
        self.is_ready = is_ready
        self.clock = clock
        self.claim_timeout_s = claim_timeout_s
        self.reviewers = Reviewers.parse(settings.review_reviewers)
        self.feedback = FeedbackPolicy.from_settings(settings)
        self.lease_s = settings.review_lease_s
        self.book = ReviewBook(SamplingPolicy.from_settings(settings), index)
        self.book.claim_listeners.append(self._claim_read)
        index.observe(self.book)
        self._waiting: dict[str, asyncio.Future[bool]] = {}
        self._opened: OrderedDict[str, Opened] = OrderedDict()
        self._last_reconcile = float("-inf")

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.stop()

    def require_ready(self) -> None:
        if not self.is_ready():
            raise ApiProblem(503, "index_loading", "the review queue is still being read from Kafka; retry shortly")
        if not self.book.settled:
            self.book.settle()

    def depth(self) -> tuple[int, int]:
        return self.book.depth(self.clock())

    # --- handing out videos -----------------------------------------------------------------------------

    async def next_for(self, reviewer: str) -> Opened | None:
        """The video ``reviewer`` holds, else a newly claimed one; None when no video is free."""
        self.require_ready()
        await self.reconcile()
        for _ in range(CLAIM_TRIES):
            now = self.clock()
            held = self.book.held_by(reviewer, now)
            if held:
                return await self._open(held[0], self.book.holder(held[0].request_key, now))
            free = self.book.available(now)
            if not free:
                return None
            claim = await self._claim(free[0], reviewer)
            if claim is not None:
                return await self._open(free[0], claim)
        return None

    async def _claim(self, item: Item, reviewer: str) -> Claim | None:
        now = self.clock()
        claim_id = uuid.uuid4().hex
        event = ReviewClaim(
            event_id=f"claim-{claim_id}", occurred_at=datetime.fromtimestamp(now, UTC), request_key=item.request_key,
            sku=item.ready.sku, claim_id=claim_id, reviewer=reviewer,
            lease_until=datetime.fromtimestamp(now + self.lease_s, UTC),
        )
        read_back: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting[claim_id] = read_back
        try:
            await self._send(REVIEW_CLAIMS, event, item.request_key)
            async with asyncio.timeout(self.claim_timeout_s):
                held = await read_back
        except TimeoutError:
            raise ApiProblem(503, "review_unavailable", "the claim was not confirmed in time; retry") from None
        finally:
            self._waiting.pop(claim_id, None)
        return self.book.claims.get(item.request_key) if held else None

    def _claim_read(self, claim: ReviewClaim, held: bool) -> None:
        waiting = self._waiting.get(claim.claim_id)
        if waiting is not None and not waiting.done():
            waiting.set_result(held)

    async def _open(self, item: Item, claim: Claim | None) -> Opened:
        assert claim is not None
        waiting, in_review = self.book.depth(self.clock())
        known = self._opened.get(item.request_key)
        if known is not None and known.claim == claim:
            return replace(known, waiting=waiting, in_review=in_review)
        request = await self._request(item.ready.sku, item.ready.variant_id, item.request_key)
        product = await self._product(item.ready.sku, request)
        opened = Opened(item, claim, request, product, style_of(self.engine, item.ready.prompt), waiting, in_review)
        self._opened[item.request_key] = opened
        while len(self._opened) > OPENED_CACHE:
            self._opened.popitem(last=False)
        return opened

    async def _request(self, sku: str, variant_id: str, request_key: str) -> VideoRequested | None:
        """The request the video was rendered from: a re-render's from its withdrawal, else its plan."""
        lineage = self.book.lineage.get(request_key)
        if lineage is not None:
            return lineage.request
        entry = self.index.skus.get(sku)
        slot = entry.slots.get(variant_id) if entry is not None else None
        if slot is None or slot.request_key != request_key:
            return None
        try:
            planned = await self.read_planned(slot.partition, slot.offset)
        except Exception as exc:  # noqa: BLE001 - the page still shows the video; re-render not possible
            log.warning("review: plan of %s unreadable: %s", request_key, exc)
            return None
        return planned.request if planned is not None and planned.request.request_key == request_key else None

    async def _product(self, sku: str, request: VideoRequested | None) -> ReviewedProduct:
        """The SKU's newest product record; what the request knows (title, photo) when it cannot be read."""
        ref = self.book.products.get(sku)
        event = None
        if ref is not None:
            try:
                event = await self.read_record(ref.topic, ref.partition, ref.offset)
            except Exception as exc:  # noqa: BLE001 - fall back to the request's fields
                log.warning("review: product %s unreadable: %s", sku, exc)
        if isinstance(event, ProductCreated):
            return ReviewedProduct(title=event.title, category=event.category, selling_points=event.selling_points,
                                   image_url=event.image_url, brand=event.brand)
        return ReviewedProduct(title=request.title if request else "", category=ref.category if ref else None,
                               image_url=request.image_url if request else None)

    # --- verdicts ---------------------------------------------------------------------------------------

    async def decide(self, reviewer: str, body: VerdictBody) -> Outcome:
        """Record ``reviewer``'s verdict. Raises ``ApiProblem``: 409 when the video was reviewed already or the
        reviewer does not hold it (lease over or taken), 422 for a reason that does not fit the verdict, 503 when
        the verdict cannot be sent."""
        self.require_ready()
        key = body.request_key
        if key in self.book.verdicts:
            raise ApiProblem(409, "already_reviewed", "this video has a verdict already; open the next one")
        now = self.clock()
        claim = self.book.holder(key, now)
        item = self.book.items.get(key)
        if claim is None or item is None or claim.claim_id != body.claim_id or claim.reviewer != reviewer:
            raise ApiProblem(409, "claim_lost", "this video is no longer yours to review (the lease ran out or "
                             "another reviewer has it); open the next one")
        opened = await self._open(item, claim)
        try:
            reviewed = self._reviewed(opened, reviewer, body, now)
        except ValueError as exc:
            raise ApiProblem(422, "schema_violation", str(exc).splitlines()[-1], field="reason") from None
        await self._send(VIDEO_REVIEWED, reviewed, reviewed.sku)
        self.book.apply_reviewed(reviewed)
        log.info("review: %s %s %s by %s (%s)", reviewed.sku, key, reviewed.verdict.value, reviewer,
                 reviewed.reason.value if reviewed.reason else "-")
        withdrawn = None
        if reviewed.verdict is Verdict.REJECTED:
            try:
                withdrawn = await self._withdraw(reviewed, opened.request)
            except Exception as exc:  # noqa: BLE001 - the verdict stands; reconcile() sends the rest later
                log.warning("review: withdrawal of %s not sent yet (%s); it is retried", key, exc)
        return Outcome(reviewed, withdrawn)

    def _reviewed(self, opened: Opened, reviewer: str, body: VerdictBody, now: float) -> VideoReviewed:
        ready, item = opened.item.ready, opened.item
        return VideoReviewed(
            event_id=f"{REVIEW_EVENT_PREFIX}{opened.claim.claim_id}", occurred_at=datetime.fromtimestamp(now, UTC),
            request_key=ready.request_key, sku=ready.sku, variant_id=ready.variant_id, verdict=body.verdict,
            reason=body.reason, note=body.note.strip()[:500], reviewer=reviewer, claim_id=opened.claim.claim_id,
            causes=sorted(item.causes, key=PRIORITY.__getitem__), template_id=ready.template_id,
            template_version=item.template_version, style=opened.style,
            category=item.category or opened.product.category, model=ready.provenance.model,
            seed=ready.provenance.seed, prompt=ready.prompt, product=opened.product, video_url=ready.video_url,
            poster_url=ready.poster_url, quality=ready.quality, rendered_at=ready.provenance.rendered_at,
            rerender_generation=self.book.generation(ready.request_key),
        )

    async def _withdraw(self, reviewed: VideoReviewed, request: VideoRequested | None) -> VideoWithdrawn:
        """The re-render request first (a crash before the withdrawal leaves the rejection open: it is redone),
        then the withdrawal, applied to this replica's index at once."""
        event = withdrawal(reviewed, request, generation=self.book.generation(reviewed.request_key),
                           policy=self.feedback, now=datetime.fromtimestamp(self.clock(), UTC))
        if event.rerender is not None:
            await self._send(VIDEO_REQUESTED_HOT, event.rerender, reviewed.sku)
        await self._send(VIDEO_WITHDRAWN, event, reviewed.sku)
        self.index.apply(VIDEO_WITHDRAWN.name, event, -1, -1)  # the book sees it through the index
        log.info("review: withdrew %s %s (%s%s)", reviewed.sku, reviewed.request_key, event.action.value,
                 f", re-render {event.rerender.request_key}" if event.rerender else "")
        return event

    async def reconcile(self) -> int:
        """Send the withdrawal of every rejection that has none after ``RECONCILE_GRACE_S`` (at most once per
        ``RECONCILE_EVERY_S``); returns how many were sent."""
        now = self.clock()
        if not self.book.open_rejections or now - self._last_reconcile < RECONCILE_EVERY_S:
            return 0
        self._last_reconcile = now
        sent = 0
        for reviewed in list(self.book.open_rejections.values()):
            if now - reviewed.occurred_at.timestamp() < RECONCILE_GRACE_S:
                continue
            request = await self._request(reviewed.sku, reviewed.variant_id, reviewed.request_key)
            try:
                await self._withdraw(reviewed, request)
                sent += 1
            except ApiProblem as exc:
                log.warning("review: reconciling %s failed: %s", reviewed.request_key, exc.message)
                break
        return sent

    async def _send(self, topic: Topic, event: BaseModel, key: str) -> None:
        try:
            await self.publish(topic, event, key.encode())
        except Exception as exc:  # noqa: BLE001 - the reviewer retries; nothing was recorded
            log.warning("review: sending to %s failed: %s", topic.name, exc)
            raise ApiProblem(503, "queue_unavailable", "the review log cannot be reached; retry") from None
