"""Topic names, partition counts and which event model each topic carries."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from schemas.events import (
    DeadLetter,
    Lane,
    ProductCreated,
    ProductUpdated,
    PromoStarted,
    VideoFailed,
    VideoReady,
    VideoRequested,
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

INPUT_TOPICS = (PRODUCT_CREATED, PRODUCT_UPDATED, PROMO_STARTED)
REQUEST_TOPICS = (VIDEO_REQUESTED_HOT, VIDEO_REQUESTED)  # renderers take hot before bulk
ALL_TOPICS = (*INPUT_TOPICS, *REQUEST_TOPICS, VIDEO_READY, VIDEO_FAILED, DEAD_LETTER)
BY_NAME = {t.name: t for t in ALL_TOPICS}


def request_topic(lane: Lane) -> Topic:
    return VIDEO_REQUESTED_HOT if lane is Lane.HOT else VIDEO_REQUESTED
