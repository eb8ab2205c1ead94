"""Topic names, partition counts and which event model each topic carries."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from schemas.engagement import EngagementEvent
from schemas.events import (
    DeadLetter,
    Lane,
    ProductCreated,
    ProductUpdated,
    PromoStarted,
    ReviewClaim,
    VideoFailed,
    VideoPlanned,
    VideoReady,
    VideoRequested,
    VideoReviewed,
    VideoWithdrawn,
)


@dataclass(frozen=True)
class Topic:
    name: str
    model: type[BaseModel]
    partitions: int
    description: str


PRODUCT_CREATED = Topic("product.created", ProductCreated, 6, "A new product (full snapshot), keyed by SKU.")
PRODUCT_UPDATED = Topic("product.updated", ProductUpdated, 6, "A changed product (full snapshot), keyed by SKU.")
PROMO_STARTED = Topic("promo.started", PromoStarted, 1, "A promotion starts over SKUs and/or categories.")
VIDEO_REQUESTED = Topic("video.requested", VideoRequested, 6, "One video to render (bulk lane), keyed by SKU.")
VIDEO_REQUESTED_HOT = Topic(
    "video.requested.hot", VideoRequested, 6, "One video to render (hot lane: hot products, promos), keyed by SKU."
)
VIDEO_READY = Topic("video.ready", VideoReady, 6, "A labelled MP4 is on the CDN, keyed by SKU.")
VIDEO_FAILED = Topic("video.failed", VideoFailed, 3, "A product or request that gets no video, and why.")
DEAD_LETTER = Topic("skuvid.dead-letter", DeadLetter, 1, "Records no consumer could process, with the reason.")
# --- listing API: on-demand renders and the planner's plans (read by the API's video index)
VIDEO_REQUESTED_ONDEMAND = Topic(
    "video.requested.ondemand", VideoRequested, 6,
    "Renders asked for through the listing API (POST /v1/videos, first views of lazily planned SKUs); "
    "taken with the hot lane, keyed by video id or SKU.",
)
VIDEO_PLANNED = Topic(
    "video.planned", VideoPlanned, 6,
    "The planner's latest plan per SKU variant, sent at once or held for the first view (compacted, keyed "
    "sku|variant_id).",
)
ENGAGEMENT = Topic("engagement", EngagementEvent, 6, "Experiment exposures and user actions, keyed by user id.")
# --- review and content credentials: human spot-checks (review/), read by the listing API's index
REVIEW_CLAIMS = Topic(
    "review.claims", ReviewClaim, 3,
    "Reviewers' leases on queued videos; the first claim in the log wins (compacted, keyed by request key).",
)
VIDEO_REVIEWED = Topic("video.reviewed", VideoReviewed, 6, "Human verdicts on published videos, keyed by SKU.")
VIDEO_WITHDRAWN = Topic(
    "video.withdrawn", VideoWithdrawn, 6,
    "Published videos no longer served (rejected in review), with the re-render or refusal that follows; "
    "keyed by SKU.",
)
REVIEW_TOPICS = (REVIEW_CLAIMS, VIDEO_REVIEWED, VIDEO_WITHDRAWN)

INPUT_TOPICS = (PRODUCT_CREATED, PRODUCT_UPDATED, PROMO_STARTED, ENGAGEMENT)
REQUEST_TOPICS = (VIDEO_REQUESTED_HOT, VIDEO_REQUESTED_ONDEMAND, VIDEO_REQUESTED)  # renderers: hot, on-demand, bulk
ALL_TOPICS = (*INPUT_TOPICS, *REQUEST_TOPICS, VIDEO_READY, VIDEO_FAILED, DEAD_LETTER, VIDEO_PLANNED, *REVIEW_TOPICS)
BY_NAME = {t.name: t for t in ALL_TOPICS}


def request_topic(lane: Lane) -> Topic:
    return VIDEO_REQUESTED_HOT if lane is Lane.HOT else VIDEO_REQUESTED
