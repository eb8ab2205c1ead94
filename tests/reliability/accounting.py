"""Inputs a scenario sends, and the books it keeps on them: one outcome per request, one object per key.

``catalog_products`` makes unique, safe products from ``tests/data/catalog.jsonl`` (unique titles, so unique
prompts and request keys); ``plan_requests`` turns them into ``video.requested`` events with the planner's own
domain code, as the planner service would. ``account`` checks what came out against what went in.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from consumers.planning import Planner
from inference.prompt import PromptEngine
from producers.emit import parse_lines
from schemas.events import ProductCreated, VideoReady, VideoRequested
from schemas.topics import PRODUCT_CREATED
from skuvid.settings import Settings
from skuvid.storage import manifest_key, object_keys, render_id
from tests.integration.harness import DATA

_ENGINE: PromptEngine | None = None


def engine() -> PromptEngine:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = PromptEngine.load()
    return _ENGINE


def catalog_products(n: int, prefix: str, *, images: bool = True) -> list[ProductCreated]:
    """``n`` products cycled from the test catalog with SKUs ``<prefix>-00000``… and numbered titles."""
    base = parse_lines(PRODUCT_CREATED, DATA / "catalog.jsonl", 1 << 20)[0]
    products = []
    for i in range(n):
        e = base[i % len(base)]
        products.append(e.model_copy(update={
            "event_id": f"{prefix}-evt-{i:05d}", "occurred_at": datetime.now(UTC), "sku": f"{prefix}-{i:05d}",
            "title": f"{e.title} {i}"[:300], "image_url": e.image_url if images else None,
        }))
    return products


def plan_requests(settings: Settings, products: Iterable[ProductCreated]) -> list[VideoRequested]:
    """The requests the planner would send for ``products`` (one variant each; refused ones are skipped)."""
    planner = Planner(engine(), settings)
    requests = []
    for p in products:
        requests += planner.plan(p.snapshot(), source_event_id=p.event_id).requests
    return requests


def stored_sha256(objects: dict[str, bytes]) -> dict[str, str]:
    return {key: hashlib.sha256(data).hexdigest() for key, data in objects.items()}


@dataclass
class Books:
    """What happened to each request key."""

    requests: int
    ready: int = 0
    failed: int = 0
    lost: int = 0
    both: int = 0  # keys with a video.ready AND a video.failed
    duplicate_objects: int = 0  # stray objects + keys whose video.ready events name more than one video
    duplicate_ready_events: int = 0  # repeated video.ready of the same video (allowed: redelivery)
    announced_not_stored: int = 0  # video.ready whose sha256 is not the stored object's
    missing_objects: int = 0
    failed_reasons: dict[str, int] = field(default_factory=dict)
    lost_keys: list[str] = field(default_factory=list)
    different_video_keys: list[str] = field(default_factory=list)

    def figures(self) -> dict:
        return {"requests": self.requests, "ready": self.ready, "failed": self.failed, "lost": self.lost,
                "duplicate_objects": self.duplicate_objects, "both_ready_and_failed": self.both,
                "duplicate_ready_events": self.duplicate_ready_events,
                "announced_not_stored": self.announced_not_stored, "missing_objects": self.missing_objects,
                "failed_reasons": self.failed_reasons, "lost_keys": self.lost_keys[:10],
                "different_video_keys": self.different_video_keys[:10]}


def account(requests: list[VideoRequested], ready: list[VideoReady], failed: list, objects: dict[str, bytes] | None,
            *, sku_prefix: str, prefix: str = "videos/", others: list[VideoRequested] = ()) -> Books:
    """Books over ``requests`` (by request key) from the outcome events and the store's ``objects``; stray
    objects are looked for among the SKUs starting with ``sku_prefix`` (this scenario's); ``others`` are requests
    of the scenario outside these books (a warm-up) whose objects are not stray."""
    by_key = {r.request_key: r for r in requests}
    books = Books(requests=len(by_key))
    videos: dict[str, set[str]] = defaultdict(set)
    ready_count: dict[str, int] = defaultdict(int)
    for e in ready:
        if e.request_key in by_key:
            videos[e.request_key].add(e.sha256)
            ready_count[e.request_key] += 1
    failed_keys: dict[str, str] = {}
    for e in failed:
        if e.request_key in by_key:
            failed_keys[e.request_key] = e.reason.value
    reasons: dict[str, int] = defaultdict(int)
    for key in by_key:
        has_ready, has_failed = key in videos, key in failed_keys
        if has_ready and has_failed:
            books.both += 1
        if has_ready:
            books.ready += 1
            books.duplicate_ready_events += ready_count[key] - len(videos[key])
            if len(videos[key]) > 1:
                books.duplicate_objects += len(videos[key]) - 1
                books.different_video_keys.append(key)
        elif has_failed:
            books.failed += 1
            reasons[failed_keys[key]] += 1
        else:
            books.lost += 1
            books.lost_keys.append(key)
    books.failed_reasons = dict(reasons)
    if objects is not None:
        _account_objects(books, by_key, videos, objects, sku_prefix=sku_prefix, prefix=prefix, others=others)
    return books


def _account_objects(books: Books, by_key: dict[str, VideoRequested], videos: dict[str, set[str]],
                     objects: dict[str, bytes], *, sku_prefix: str, prefix: str, others: Iterable[VideoRequested]) -> None:
    """Each announced request has its manifest, naming the one video its events announce, stored with that
    hash; any other video file of the scenario's SKUs (not named by a manifest) is a stray."""
    shas = stored_sha256(objects)
    named: set[str] = set()
    for request in [*by_key.values(), *others]:
        manifest = objects.get(manifest_key(prefix, request.sku, request.request_key))
        if manifest:
            stored = VideoReady.model_validate_json(manifest)
            named.update(object_keys(prefix, request.sku, request.request_key, render_id(stored.sha256)).values())
            if request.request_key in videos:
                video = object_keys(prefix, request.sku, request.request_key, render_id(stored.sha256))["video"]
                books.announced_not_stored += sum(1 for v in videos[request.request_key]
                                                  if v != stored.sha256 or shas.get(video) != v)
        elif request.request_key in by_key and request.request_key in videos:
            books.missing_objects += 1
    stray = [k for k in shas if k.startswith(prefix + sku_prefix) and k.endswith(".mp4") and k not in named]
    books.duplicate_objects += len(stray)
