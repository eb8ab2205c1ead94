"""Rendered files -> objects on the store/CDN -> the ``video.ready`` event that announces them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from schemas.events import Cost, Provenance, VideoReady, VideoRequested
from skuvid.storage import ObjectStore, object_keys

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
    manifest = await store.get(object_keys(prefix, request.sku, request.request_key)["manifest"])
    return VideoReady.model_validate_json(manifest) if manifest else None


async def upload(store: ObjectStore, request: VideoRequested, rendered: RenderedVideo, *, prefix: str,
                 content_producer: str, cost: Cost | None = None) -> VideoReady:
    """Upload video and poster, then the manifest last: a manifest always points at complete objects."""
    keys = object_keys(prefix, request.sku, request.request_key)
    video_url = await store.put(keys["video"], rendered.renditions.mp4.path.read_bytes(), "video/mp4")
    poster_url = await store.put(keys["poster"], rendered.renditions.poster.path.read_bytes(), "image/jpeg")
    feed = rendered.renditions.feed_mp4
    feed_url = await store.put(keys["feed"], feed.path.read_bytes(), "video/mp4") if feed else None
    ready = build_ready(request, rendered, video_url=video_url, poster_url=poster_url, feed_video_url=feed_url,
                        content_producer=content_producer, cost=cost)
    await store.put(keys["manifest"], ready.model_dump_json().encode(), "application/json")
    return ready
