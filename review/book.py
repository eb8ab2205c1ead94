"""The review queue, as every API replica reads it from Kafka (an observer of the video index; no I/O here).

Sources, each read from the beginning (``api.feed`` reads them with the index topics, so a replica is ready
once the queue is caught up too):

* ``video.ready`` — candidates; ``review.sampling`` decides which are queued and why. The template version
  comes from the video's plan in the index (``video.planned``) or, for a re-render, from its withdrawal; the
  category from the newest ``product.created``/``product.updated`` of the SKU, of which only the position
  (topic, partition, offset) is kept: the product card is read back by position when a reviewer opens the
  video. A video read before its plan or product (a rebuild reads the topics interleaved) is parked until
  both are read, or until the replica caught up (``settle``);
* ``review.claims`` — leases. A claim holds when the video has no verdict and no *other* reviewer's lease runs
  at the claim's time; every replica applies this rule in log order (one partition per video), so all agree
  on the holder and a video is never handed to two reviewers at once. The topic is compacted by request key
  with a compaction lag far above any lease: only expired claims are ever compacted away;
* ``video.reviewed`` — verdicts: the first per request key counts, the video leaves the queue;
* ``video.withdrawn`` — rejected videos that were withdrawn (their feedback is done), and the lineage of
  re-renders (generation, request) so a re-render's review knows how many re-renders came before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from sys import intern

from api.index import ONDEMAND_PREFIX, VideoIndex
from review.sampling import Earliest, SamplingPolicy, stratum_of
from schemas.events import (
    REVIEW_EVENT_PREFIX,
    ProductCreated,
    ReviewCause,
    ReviewClaim,
    Verdict,
    VideoPlanned,
    VideoReady,
    VideoRequested,
    VideoReviewed,
    VideoWithdrawn,
)
from schemas.topics import PRODUCT_CREATED, PRODUCT_UPDATED, REVIEW_CLAIMS, VIDEO_REVIEWED, VIDEO_WITHDRAWN

# Far above any lease (Settings.review_lease_s <= minutes): compaction only ever drops expired claims.
CLAIM_COMPACTION_LAG_MS = 7 * 24 * 3600 * 1000
REVIEW_TOPIC_CONFIGS = {
    REVIEW_CLAIMS.name: {"cleanup.policy": "compact", "min.compaction.lag.ms": str(CLAIM_COMPACTION_LAG_MS)},
}
PRIORITY = {ReviewCause.RERENDER: 0, ReviewCause.FLAGGED: 1, ReviewCause.NEW_TEMPLATE: 2, ReviewCause.SAMPLED: 3}
MAX_PARKED = 100_000  # videos waiting for their plan or product; beyond, the oldest is decided with what is known


@dataclass(slots=True, frozen=True)
class ProductRef:
    """Where the newest product record of a SKU lies, and its category (for the stratum)."""

    topic: str
    partition: int
    offset: int
    category: str
    at: float


@dataclass(slots=True, frozen=True)
class Claim:
    claim_id: str
    reviewer: str
    at: float
    lease_until: float


@dataclass(slots=True)
class Item:
    """A queued video: what ``video.ready`` said, why it is queued, its stratum's category, template version."""

    ready: VideoReady
    causes: set[ReviewCause]
    category: str | None
    template_version: int | None

    @property
    def request_key(self) -> str:
        return self.ready.request_key

    @property
    def rendered_at(self) -> float:
        return self.ready.provenance.rendered_at.timestamp()

    def order(self) -> tuple[int, float, str]:
        return min(PRIORITY[c] for c in self.causes), self.rendered_at, self.request_key


@dataclass(frozen=True)
class Lineage:
    """A re-render: which one of its lineage (1 = the first) and the request that was sent."""

    generation: int
    request: VideoRequested


ClaimListener = Callable[[ReviewClaim, bool], None]


class ReviewBook:
    topics = (PRODUCT_CREATED, PRODUCT_UPDATED, REVIEW_CLAIMS, VIDEO_REVIEWED, VIDEO_WITHDRAWN)

    def __init__(self, policy: SamplingPolicy, index: VideoIndex) -> None:
        self.policy = policy
        self.index = index
        self.products: dict[str, ProductRef] = {}
        self.items: dict[str, Item] = {}  # request key -> queued video (until its verdict or withdrawal)
        self.parked: dict[str, VideoReady] = {}
        self._parked_by_sku: dict[str, set[str]] = {}
        self.settled = False
        self.claims: dict[str, Claim] = {}  # request key -> the holding claim (maybe expired)
        self.verdicts: dict[str, VideoReviewed] = {}  # request key -> the verdict that counts
        self.withdrawn: set[str] = set()
        self.open_rejections: dict[str, VideoReviewed] = {}  # review event id -> rejection not yet withdrawn
        self._withdrawn_reviews: set[str] = set()
        self.lineage: dict[str, Lineage] = {}  # re-render request key -> lineage
        self._first_of_version: dict[tuple[str, int], Earliest] = {}
        self._first_of_stratum: dict[str, Earliest] = {}
        self.claim_listeners: list[ClaimListener] = []

    # --- applying records -----------------------------------------------------------------------------

    def apply(self, topic: str, event: object, partition: int, offset: int) -> None:
        """One record the index feed read (any index or review topic), after the index applied it."""
        if isinstance(event, VideoReady):
            self.apply_ready(event)
        elif isinstance(event, VideoPlanned):
            self._resolve([event.request.request_key])
        elif isinstance(event, ProductCreated):  # ProductUpdated too
            self.apply_product(topic, event, partition, offset)
        elif isinstance(event, ReviewClaim):
            self.apply_claim(event)
        elif isinstance(event, VideoReviewed):
            self.apply_reviewed(event)
        elif isinstance(event, VideoWithdrawn):
            self.apply_withdrawn(event)

    def apply_product(self, topic: str, event: ProductCreated, partition: int, offset: int) -> None:
        at = event.occurred_at.timestamp()
        known = self.products.get(event.sku)
        if known is None or at >= known.at:
            self.products[event.sku] = ProductRef(intern(topic), partition, offset, intern(event.category), at)
        self._resolve(self._parked_by_sku.get(event.sku, ()))

    def apply_ready(self, ready: VideoReady) -> None:
        key = ready.request_key
        if ready.variant_id.startswith(ONDEMAND_PREFIX):  # POST /v1/videos renders are no listing's video
            return
        if key in self.verdicts or key in self.withdrawn or key in self.items or key in self.parked:
            return
        version, plan_known = self._template_version(ready)
        if not self.settled and not (plan_known and ready.sku in self.products):
            self._park(ready)
            return
        self._decide(ready, version)

    def apply_claim(self, claim: ReviewClaim) -> None:
        key = claim.request_key
        accepted = False
        if key not in self.verdicts and key not in self.withdrawn:
            current = self.claims.get(key)
            at = claim.occurred_at.timestamp()
            accepted = (current is None or current.claim_id == claim.claim_id or current.reviewer == claim.reviewer
                        or at >= current.lease_until)
            if accepted:
                self.claims[key] = Claim(claim.claim_id, claim.reviewer, at, claim.lease_until.timestamp())
        for listener in self.claim_listeners:
            listener(claim, accepted)

    def apply_reviewed(self, event: VideoReviewed) -> None:
        key = event.request_key
        if key in self.verdicts:
            return  # the first verdict counts
        self.verdicts[key] = event
        self.items.pop(key, None)
        self.claims.pop(key, None)
        self._unpark(key)
        if event.verdict is Verdict.REJECTED and event.event_id not in self._withdrawn_reviews:
            self.open_rejections[event.event_id] = event

    def apply_withdrawn(self, event: VideoWithdrawn) -> None:
        self.withdrawn.add(event.request_key)
        self.items.pop(event.request_key, None)
        self._unpark(event.request_key)
        self._withdrawn_reviews.add(event.review_event_id)
        self.open_rejections.pop(event.review_event_id, None)
        if event.rerender is not None:
            self.lineage[event.rerender.request_key] = Lineage(event.rerender_generation, event.rerender)
            self._resolve([event.rerender.request_key])

    def settle(self) -> None:
        """The replica has caught up: decide every parked video with what is known; park nothing from now on."""
        self.settled = True
        for key in list(self.parked):
            ready = self._unpark(key)
            if ready is not None:
                self._decide(ready, self._template_version(ready)[0])

    # --- deciding -------------------------------------------------------------------------------------

    def _template_version(self, ready: VideoReady) -> tuple[int | None, bool]:
        """The video's template version and whether its plan (or re-render lineage) is known."""
        entry = self.index.skus.get(ready.sku)
        slot = entry.slots.get(ready.variant_id) if entry is not None else None
        if slot is not None and slot.request_key == ready.request_key:
            return slot.template_version, True
        lineage = self.lineage.get(ready.request_key)
        if lineage is not None:
            return lineage.request.prompt.template_version, True
        return None, False

    def _decide(self, ready: VideoReady, version: int | None) -> None:
        key, at = ready.request_key, ready.provenance.rendered_at.timestamp()
        product = self.products.get(ready.sku)
        category = product.category if product is not None else None
        causes: set[ReviewCause] = set()
        if ready.quality.flagged:
            causes.add(ReviewCause.FLAGGED)
        if ready.provenance.source_event_id.startswith(REVIEW_EVENT_PREFIX):
            causes.add(ReviewCause.RERENDER)
        if version is not None:
            first = self._first_of_version.setdefault(
                (ready.template_id, version), Earliest(self.policy.new_template_first))
            admitted, pushed_out = first.add(at, key)
            if admitted:
                causes.add(ReviewCause.NEW_TEMPLATE)
            self._drop_cause(pushed_out, ReviewCause.NEW_TEMPLATE)
        stratum = stratum_of(category, ready.template_id)
        floor = self._first_of_stratum.setdefault(stratum, Earliest(self.policy.min_per_stratum))
        admitted, pushed_out = floor.add(at, key)
        if admitted or self.policy.sampled(key, stratum):
            causes.add(ReviewCause.SAMPLED)
        if pushed_out is not None and not self.policy.sampled(pushed_out, stratum):
            self._drop_cause(pushed_out, ReviewCause.SAMPLED)
        if causes:
            self.items[key] = Item(ready, causes, category, version)

    def _drop_cause(self, key: str | None, cause: ReviewCause) -> None:
        item = self.items.get(key) if key is not None else None
        if item is None:
            return
        item.causes.discard(cause)
        if not item.causes and key not in self.claims:
            del self.items[key]

    def _park(self, ready: VideoReady) -> None:
        self.parked[ready.request_key] = ready
        self._parked_by_sku.setdefault(ready.sku, set()).add(ready.request_key)
        if len(self.parked) > MAX_PARKED:
            oldest = self._unpark(next(iter(self.parked)))
            if oldest is not None:
                self._decide(oldest, self._template_version(oldest)[0])

    def _unpark(self, key: str) -> VideoReady | None:
        ready = self.parked.pop(key, None)
        if ready is not None:
            keys = self._parked_by_sku.get(ready.sku)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._parked_by_sku[ready.sku]
        return ready

    def _resolve(self, keys: Iterable[str]) -> None:
        for key in list(keys):
            ready = self.parked.get(key)
            if ready is None:
                continue
            version, plan_known = self._template_version(ready)
            if plan_known and ready.sku in self.products:
                self._unpark(key)
                self._decide(ready, version)

    # --- queries --------------------------------------------------------------------------------------

    def holder(self, request_key: str, now: float) -> Claim | None:
        """The claim on ``request_key`` whose lease runs at ``now``."""
        claim = self.claims.get(request_key)
        return claim if claim is not None and claim.lease_until > now else None

    def available(self, now: float) -> list[Item]:
        """Queued videos nobody holds now, in review order: re-renders, flagged, new templates, sample; oldest
        render first."""
        free = [item for key, item in self.items.items() if self.holder(key, now) is None]
        return sorted(free, key=Item.order)

    def held_by(self, reviewer: str, now: float) -> list[Item]:
        held = [item for key, item in self.items.items()
                if (claim := self.holder(key, now)) is not None and claim.reviewer == reviewer]
        return sorted(held, key=Item.order)

    def depth(self, now: float) -> tuple[int, int]:
        """(videos waiting for a reviewer, videos a reviewer holds now)."""
        held = sum(1 for key in self.items if self.holder(key, now) is not None)
        return len(self.items) - held, held

    def generation(self, request_key: str) -> int:
        """0 for a planned video, n for the n-th re-render of its lineage."""
        lineage = self.lineage.get(request_key)
        return lineage.generation if lineage is not None else 0
