"""Rendered files -> objects on the store/CDN -> the ``video.ready`` event that announces them."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from schemas.events import Cost, Provenance, Reason, VideoReady, VideoRequested
from skuvid.errors import Outcome, SkuvidError
from skuvid.storage import ObjectStore, manifest_key, object_keys, render_folder, render_id

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # the render job imports torch: the render CLI must not need it before the model loads
    from inference.render_job import RenderedVideo


def build_ready(request: VideoRequested, rendered: RenderedVideo, *, video_url: str, poster_url: str,
                feed_video_url: str | None, content_producer: str, cost: Cost | None = None) -> VideoReady:
    mp4 = rendered.renditions.mp4
    now = datetime.now(UTC)
    return VideoReady(
        event_id=f"ready-{request.request_key[:32]}",
        occurred_at=now,
        request_key=request.request_key,
        sku=request.sku,
        variant_id=request.variant_id,
        video_url=video_url,
        poster_url=poster_url,
        feed_video_url=feed_video_url,
        width=mp4.width,
        height=mp4.height,
        num_frames=mp4.num_frames,
        fps=mp4.fps,
        duration_s=mp4.duration_s,
        bytes=mp4.bytes,
        sha256=mp4.sha256,
        prompt=request.prompt.positive,
        template_id=request.prompt.template_id,
        quality=rendered.quality,
        provenance=Provenance(
            content_producer=content_producer,
            produce_id=request.request_key,
            model=request.model,
            seed=rendered.seed,
            source_event_id=request.source_event_id,
            rendered_at=now,
        ),
        cost=cost,
    )


async def stored_ready(store: ObjectStore, request: VideoRequested, prefix: str) -> VideoReady | None:
    """The ``video.ready`` of an earlier render of this exact request, if its manifest is in the store."""
    manifest = await store.get(manifest_key(prefix, request.sku, request.request_key))
    return VideoReady.model_validate_json(manifest) if manifest else None


async def upload(store: ObjectStore, request: VideoRequested, rendered: RenderedVideo, *, prefix: str,
                 content_producer: str, cost: Cost | None = None) -> VideoReady:
    """Upload this render's files under its own keys, then its manifest if the request has none yet.

    The first manifest wins: when another render of the request (a rebalance, a redelivery) committed first,
    its ``video.ready`` is returned instead, so every publisher of a request announces the same video.
    """
    keys = object_keys(prefix, request.sku, request.request_key, render_id(rendered.renditions.mp4.sha256))
    video_url = await store.put(keys["video"], rendered.renditions.mp4.path.read_bytes(), "video/mp4")
    poster_url = await store.put(keys["poster"], rendered.renditions.poster.path.read_bytes(), "image/jpeg")
    feed = rendered.renditions.feed_mp4
    feed_url = await store.put(keys["feed"], feed.path.read_bytes(), "video/mp4") if feed else None
    ready = build_ready(request, rendered, video_url=video_url, poster_url=poster_url, feed_video_url=feed_url,
                        content_producer=content_producer, cost=cost)
    if not await store.put_new(keys["manifest"], ready.model_dump_json().encode(), "application/json"):
        earlier = await stored_ready(store, request, prefix)
        if earlier is None:
            raise SkuvidError(f"the manifest {keys['manifest']!r} exists but cannot be read",
                              reason=Reason.STORAGE_UNAVAILABLE, kind=Outcome.RETRY)
        log.info("another render of %s was stored first: publishing its video", request.request_key)
        ready = earlier
    await sweep(store, request, ready, prefix)
    return ready


async def sweep(store: ObjectStore, request: VideoRequested, ready: VideoReady, prefix: str) -> list[str]:
    """Delete the files of this request's renders that its manifest does not name (a render that lost the
    manifest race, or one cut short by a crash before its manifest): nobody was ever told of them."""
    kept = set(object_keys(prefix, request.sku, request.request_key, render_id(ready.sha256)).values())
    stray = [key for key in await store.keys_under(render_folder(prefix, request.sku, request.request_key))
             if key not in kept]
    for key in stray:
        await store.delete(key)
    if stray:
        log.info("swept %d files of other renders of %s", len(stray), request.request_key)
    return stray
