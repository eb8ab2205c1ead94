"""HTTP bodies of the listing API (strict: unknown fields are refused, as every skuvid boundary model).

These models are the API's contract: ``api.openapi`` generates ``schemas/generated/openapi.json`` from them
and a test fails when the checked-in file drifts. No body names a Kafka topic, a partition or a storage key:
videos are CDN URLs and on-demand renders are opaque ids.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from schemas.events import Sku

Label = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
VideoId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{24}$")]
IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VideoLookup(Body):
    """``GET /v1/skus/{sku}/video`` 200: the video the listing plays now."""

    sku: Sku
    variant_id: str = Field(description="The variant served (the user's A/B arm when there are several).",
                            examples=["daily-a"])
    video_url: str = Field(description="H.264 MP4 on the CDN.")
    poster_url: str = Field(description="JPEG poster (first frame) on the CDN.")
    feed_video_url: str | None = Field(default=None, description="9:16 cut for feeds, when rendered.")
    request_key: str = Field(description="Content hash of the video (AIGC ProduceID): equal keys, equal videos.")
    promo_id: str | None = Field(default=None, description="The promo whose variant is served, inside its window.")
    valid_until: datetime | None = Field(default=None, description="End of the promo window; null: daily video.")
    experiment_id: str | None = Field(
        default=None, description="Experiment of the A/B choice (experiments.assignment), null when the SKU has one "
        "variant or no user was given.", examples=["skuvid-variants:daily"],
    )
    ai_generated: Literal[True] = Field(default=True, description="The video is AI-generated and labelled so.")


class LookupMiss(Body):
    """``GET /v1/skus/{sku}/video`` 404: no video to play now, and why."""

    status: Literal["pending", "refused", "unknown"] = Field(
        description="pending: planned, a render is queued or running (show the photos); refused: the product or "
        "its render was refused; unknown: not a product the catalog sent."
    )
    reason: str = Field(description="Machine-readable reason code.", examples=["render_queued", "unsafe_content"])
    message: str = Field(default="", description="Human-readable explanation.")


class VideoCreate(Body):
    """``POST /v1/videos``: an on-demand render through the same safety gate and renderers."""

    prompt: Annotated[str, StringConstraints(min_length=1, max_length=2000)] = Field(
        description="What the video shows; screened by the content safety gate.", examples=["a ceramic mug on a desk"]
    )
    duration: float = Field(ge=2.0, le=10.0, description="Seconds.", examples=[5.0])
    resolution: Literal["240p", "480p", "720p"]
    aspect: Literal["16:9", "9:16", "1:1"] | None = Field(default=None, description="Default: the service's aspect.")
    image_url: Annotated[str, StringConstraints(max_length=2048, pattern=r"^https?://")] | None = Field(
        default=None, description="First frame (image-to-video); http(s) only."
    )
    sku: Sku | None = Field(default=None, description="Product the render belongs to (labels it; the listing's "
                                                      "videos still come from the catalog).")


class VideoAccepted(Body):
    """``POST /v1/videos`` 202."""

    id: VideoId
    status_url: str = Field(examples=["/v1/videos/0123456789abcdef01234567"])


class VideoStatus(Body):
    """``GET /v1/videos/{id}``."""

    id: VideoId
    status: Literal["queued", "rendering", "ready", "failed"] = Field(
        description="queued: waiting in the on-demand lane; rendering: a renderer has taken it; ready; failed."
    )
    video_url: str | None = None
    poster_url: str | None = None
    reason: str | None = Field(default=None, description="failed: the reason code.")
    message: str | None = None


class PromoStatus(Body):
    """``GET /v1/promos/{promo_id}``: how far a campaign's videos are.

    ``targeted`` counts SKUs (listed, matched by category, or unknown); ``planned`` and ``ready`` count
    videos (one per planned variant); ``failed`` counts failed videos and SKUs refused at planning, by reason.
    """

    promo_id: str
    targeted: int = Field(ge=0)
    planned: int = Field(ge=0)
    ready: int = Field(ge=0)
    failed: dict[str, int] = Field(description="reason -> count (unknown_sku included).")
    unknown_skus: list[str] = Field(description="Listed SKUs the catalog does not know.")
    eta_s: float | None = Field(
        description="Seconds until the last planned video is ready: the renders ahead of it in the hot and "
        "on-demand lanes over the renderers' measured throughput; 0 when done, null before any throughput is known."
    )
    starts_at: datetime | None = None
    ends_at: datetime | None = None


class ApiError(Body):
    """Every other 4xx/5xx: a machine-readable reason and a message, never a traceback."""

    reason: str = Field(examples=["schema_violation", "body_too_large", "idempotency_key_reused"])
    message: str
    field: str | None = Field(default=None, description="The offending input, when one is to blame.")
    rule: str | None = Field(default=None, description="unsafe_content: the safety rule that matched.")
