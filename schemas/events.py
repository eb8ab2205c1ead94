"""Typed events on every skuvid topic (schema version 1).

Input events (``product.*``, ``promo.started``) are tolerant readers: fields skuvid does not know are accepted
and dropped at the boundary (never stored, prompted or hashed), while known fields stay strictly typed.
skuvid's own events are strict: unknown fields are refused. A breaking change is a new model version and a
new topic suffix, never an edit in place (rules in ``schemas/README.md``); the exported JSON Schema files in
``schemas/generated`` are checked in and a test fails when they drift from these models.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

SCHEMA_VERSION = 1

Sku = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
EventId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
ShortText = Annotated[str, StringConstraints(max_length=500)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class Locale(StrEnum):
    """Target market of a listing; the prompt language follows it, not the title's language."""

    ZH_CN = "zh-CN"
    EN_US = "en-US"


class Lane(StrEnum):
    """Priority lane of a render request: hot products and promos jump the bulk backlog."""

    HOT = "hot"
    BULK = "bulk"


class Reason(StrEnum):
    """Machine-readable reason codes carried by ``video.failed`` and the dead-letter topic."""

    INVALID_JSON = "invalid_json"
    SCHEMA_VIOLATION = "schema_violation"
    OVERSIZED_PAYLOAD = "oversized_payload"
    UNKNOWN_TOPIC = "unknown_topic"
    UNSAFE_CONTENT = "unsafe_content"
    EMPTY_CONTENT = "empty_content"
    INVALID_PARAMS = "invalid_params"
    IMAGE_FETCH_FAILED = "image_fetch_failed"
    QUALITY_GATE = "quality_gate"
    GPU_OOM = "gpu_oom"
    INVALID_OUTPUT = "invalid_output"
    RENDER_ERROR = "render_error"
    INTERNAL_ERROR = "internal_error"
    FILE_UNREADABLE = "file_unreadable"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    BROKER_UNAVAILABLE = "broker_unavailable"
    MODEL_UNAVAILABLE = "model_unavailable"
    AUTH_FAILED = "auth_failed"
    TLS_FAILED = "tls_failed"
    UNKNOWN_SKU = "unknown_sku"


class Model(BaseModel):
    """Base of skuvid's own models: unknown fields are refused, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class InputModel(BaseModel):
    """Base of what other teams send: unknown fields are ignored (tolerant reader), known ones strictly typed."""

    model_config = ConfigDict(extra="ignore", frozen=True, json_schema_extra={"additionalProperties": True})


class EventFields(BaseModel):
    """Fields every event carries; ``event_id`` is also the CloudEvents ``id`` header."""

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, description="Version of this event's schema.")
    event_id: EventId = Field(description="Unique id of this event (idempotency key).", examples=["evt-0001"])
    occurred_at: AwareDatetime = Field(description="When the event happened (RFC 3339, with offset).")


class Event(EventFields, Model):
    """Base of skuvid's own events (strict)."""


class InputEvent(EventFields, InputModel):
    """Base of the events skuvid consumes from other teams (tolerant)."""


class ProductFields(InputModel):
    """The product data skuvid needs to plan a video; anything else a catalog sends (price, stock …) is ignored."""

    sku: Sku = Field(description="Stock keeping unit: the product's stable id.", examples=["SKU-1001"])
    title: Annotated[str, StringConstraints(max_length=300)] = Field(
        description="Product title as shown on the listing.", examples=["降噪蓝牙耳机 Pro"]
    )
    category: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        description="Category key or name (e.g. '3c', 'kitchen', '美妆'); unknown ones use the generic template.",
        examples=["3c"],
    )
    selling_points: list[ShortText] = Field(
        default_factory=list, max_length=30, description="Selling points, most important first.",
        examples=[["续航30小时", "主动降噪"]],
    )
    attributes: dict[Annotated[str, StringConstraints(max_length=64)], ShortText] = Field(
        default_factory=dict, max_length=64, description="Structured attributes (colour, material, size …).",
        examples=[{"颜色": "曜石黑", "材质": "铝合金"}],
    )
    image_url: Annotated[str, StringConstraints(max_length=2048)] | None = Field(
        default=None, description="Product photo; when present the video starts from it.",
    )
    brand: Annotated[str, StringConstraints(max_length=100)] | None = Field(default=None, description="Brand name.")
    locale: Locale = Field(default=Locale.ZH_CN, description="Target market of the listing.")
    hot: bool = Field(default=False, description="Hot product: rendered in the hot lane.")


class ProductSnapshot(ProductFields):
    """The latest full state of one product, as kept in the planner's table."""


class ProductCreated(InputEvent, ProductFields):
    """``product.created``: a new product, full snapshot."""

    def snapshot(self) -> ProductSnapshot:
        """The product fields of this (validated) event, without validating them again."""
        return ProductSnapshot.model_construct(**{name: getattr(self, name) for name in ProductFields.model_fields})


class ProductUpdated(ProductCreated):
    """``product.updated``: the full new snapshot of a product (not a patch)."""


class PromoStarted(InputEvent):
    """``promo.started``: a promotion starts; every matching product gets a promo variant."""

    promo_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(examples=["P-1111"])
    copy_text: Annotated[str, StringConstraints(min_length=1, max_length=60)] = Field(
        description="Promo copy. Never put into the model prompt: it becomes an overlay caption.",
        examples=["限时5折！买一赠三"],
    )
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    skus: list[Sku] = Field(default_factory=list, max_length=10_000, description="Products in the promo.")
    categories: list[Annotated[str, StringConstraints(max_length=64)]] = Field(
        default_factory=list, max_length=100, description="Whole categories in the promo (in addition to skus)."
    )
    style: Annotated[str, StringConstraints(max_length=32)] | None = Field(
        default=None, description="Style word for the promo videos (from the curated style list)."
    )


class OverlayCaption(Model):
    """Text drawn on the video after generation (promo copy); times are seconds into the clip."""

    text: Annotated[str, StringConstraints(min_length=1, max_length=60)]
    start_s: float = Field(ge=0)
    end_s: float = Field(gt=0)
    promo_id: str | None = None
    valid_from: datetime | None = Field(default=None, description="Promo start (wall clock).")
    valid_until: datetime | None = Field(default=None, description="Promo end (wall clock).")


class Prompt(Model):
    """The engineered prompt for one product variant."""

    positive: Annotated[str, StringConstraints(min_length=1, max_length=4000)]
    negative: Annotated[str, StringConstraints(max_length=4000)]
    language: Locale
    template_id: str
    template_version: int
    overlays: list[OverlayCaption] = Field(default_factory=list, max_length=8)
    prompt_hash: Sha256Hex = Field(description="Stable hash of everything above.")


class RenderParams(Model):
    """Generation parameters; every field changes the video and so enters the request key."""

    width: int = Field(ge=32, le=1920, multiple_of=32)
    height: int = Field(ge=32, le=1920, multiple_of=32)
    num_frames: int = Field(ge=5, le=241, description="4n+1 frames.")
    fps: int = Field(default=24, ge=1, le=60)
    steps: int = Field(ge=1, le=100)
    guidance_scale: float = Field(ge=0.0, le=20.0)
    flow_shift: float = Field(gt=0.0, le=20.0)
    seed: int = Field(ge=0, lt=2**63)


class VideoRequested(Event):
    """``video.requested``: one video to render, planned from a product snapshot (and maybe a promo)."""

    request_key: Sha256Hex = Field(description="hash(model, prompt, image, params): equal keys, equal videos.")
    sku: Sku
    variant_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(examples=["daily-a"])
    lane: Lane
    model: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    prompt: Prompt
    image_url: str | None = None
    params: RenderParams
    title: Annotated[str, StringConstraints(max_length=300)] = Field(description="For galleries and logs.")
    source_event_id: EventId = Field(description="The product or promo event this request came from.")


class VideoPlanned(Event):
    """``video.planned``: the planner's latest plan for one SKU variant (compacted topic, keyed ``sku|variant_id``).

    Every request the planner plans is recorded here, whether it was sent to a render lane at once
    (``dispatched``, render policy eager) or held until its listing is first viewed (lazy): the listing API
    builds its video index from this topic and enqueues a held request, byte for byte, on first view.
    """

    request: VideoRequested
    dispatched: bool = Field(description="Sent to a render lane when planned; false: held for the first view.")

    def slot(self) -> str:
        """The record key: one compacted record per SKU variant."""
        return f"{self.request.sku}|{self.request.variant_id}"


class QualityReport(Model):
    """Quality-gate outcome of the published (best) attempt."""

    passed: bool
    attempts: int = Field(ge=1)
    scores: dict[str, float] = Field(default_factory=dict)
    flagged: bool = Field(default=False, description="Published below the gate by policy.")


class Provenance(Model):
    """Where the video came from: the AIGC implicit-label identifiers and the generation inputs."""

    content_producer: str
    produce_id: str = Field(description="AIGC ProduceID (the request key).")
    model: str
    seed: int
    source_event_id: EventId
    rendered_at: AwareDatetime


class Cost(Model):
    """What one video cost: GPU seconds of its render (all quality attempts) and their price."""

    gpu_seconds: float = Field(ge=0, description="GPU seconds spent generating and gating this video.")
    cny: float = Field(ge=0, description="gpu_seconds at the configured price per GPU-hour (CNY).")

    @classmethod
    def of(cls, gpu_seconds: float, price_cny_per_hour: float) -> Cost:
        return cls(gpu_seconds=round(gpu_seconds, 3), cny=round(gpu_seconds * price_cny_per_hour / 3600, 6))


class VideoReady(Event):
    """``video.ready``: a labelled MP4 is on the CDN."""

    request_key: Sha256Hex
    sku: Sku
    variant_id: str
    video_url: str
    poster_url: str
    feed_video_url: str | None = Field(default=None, description="9:16 cut for feeds, when configured.")
    width: int
    height: int
    num_frames: int
    fps: int
    duration_s: float
    bytes: int = Field(ge=0)
    sha256: Sha256Hex
    prompt: str
    template_id: str
    quality: QualityReport
    provenance: Provenance
    cost: Cost | None = Field(default=None, description="GPU time and price of this video's render.")


MAX_MESSAGE_CHARS = 2000
MAX_DETAIL_CHARS = 500
MAX_DETAILS = 32
DetailValue = Annotated[str, StringConstraints(max_length=MAX_DETAIL_CHARS)] | float | int | bool | None


class VideoFailed(Event):
    """``video.failed``: a product or request that will not get a video, and why.

    Bounded by construction (build it with ``consumers.outcomes.failed_event``): the message and every detail
    are cut to a limit and ``truncated`` says so, so publishing an outcome can never exceed the broker's limit.
    """

    reason: Reason
    message: Annotated[str, StringConstraints(max_length=MAX_MESSAGE_CHARS)]
    sku: Annotated[str, StringConstraints(max_length=64)] | None = None
    request_key: Sha256Hex | None = None
    source_event_id: Annotated[str, StringConstraints(max_length=128)] | None = None
    attempts: int = Field(default=1, ge=1, description="How many times the request was tried.")
    details: dict[Annotated[str, StringConstraints(max_length=64)], DetailValue] = Field(
        default_factory=dict, max_length=MAX_DETAILS
    )
    truncated: bool = Field(default=False, description="The message or a detail was cut to its bound.")


class DeadLetter(Model):
    """A record no consumer could process: the original bytes and where they came from."""

    reason: Reason
    message: str
    topic: str
    partition: int
    offset: int
    key_b64: str | None = None
    value_b64: str = Field(description="The original payload, base64 (truncated to 512 KiB when larger).")
    value_truncated: bool = False
    failed_at: AwareDatetime


# --- review and content credentials: human spot-checks, their verdicts and withdrawals ---------------------

ReviewerId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")]
ClaimId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
REVIEW_EVENT_PREFIX = "review-"  # event id of a VideoReviewed, and source_event_id of the re-renders it causes


class Verdict(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"


class RejectReason(StrEnum):
    """Why a reviewer rejected a video (the review page's reason codes, in the order of its shortcuts 1-6)."""

    WRONG_PRODUCT = "wrong_product"
    VISUAL_ARTEFACTS = "visual_artefacts"
    GARBLED_TEXT = "garbled_text"
    UNSAFE = "unsafe"
    OFF_BRAND = "off_brand"
    OTHER = "other"


class ReviewCause(StrEnum):
    """Why a published video is in the review queue (a video may have several causes)."""

    FLAGGED = "flagged"  # published below the quality gate
    RERENDER = "rerender"  # the re-render of a rejected video
    NEW_TEMPLATE = "new_template"  # among the first renders of its template version
    SAMPLED = "sampled"  # the stratified random sample (category x template)


class WithdrawalAction(StrEnum):
    """What follows a withdrawal: a re-render with a new seed, a refusal of the product until its data
    changes, or nothing more (the request is superseded: a newer plan of the variant renders anyway)."""

    RERENDER = "rerender"
    REFUSE = "refuse"
    WITHDRAW = "withdraw"


class ReviewClaim(Event):
    """``review.claims``: a reviewer takes one queued video for a lease (compacted, keyed by request key).

    Every replica applies the same rule in log order, so all agree on the holder: a claim holds when the video
    has no verdict and no other reviewer's lease is running at the claim's ``occurred_at``.
    """

    request_key: Sha256Hex
    sku: Sku
    claim_id: ClaimId = Field(description="Random id of this claim; the verdict names it.")
    reviewer: ReviewerId
    lease_until: AwareDatetime = Field(description="The claim lapses then; the video goes back to the queue.")


class ReviewedProduct(Model):
    """The product card the reviewer saw next to the video."""

    title: Annotated[str, StringConstraints(max_length=300)]
    category: Annotated[str, StringConstraints(max_length=64)] | None = None
    selling_points: list[ShortText] = Field(default_factory=list, max_length=30)
    image_url: Annotated[str, StringConstraints(max_length=2048)] | None = None
    brand: Annotated[str, StringConstraints(max_length=100)] | None = None


class VideoReviewed(Event):
    """``video.reviewed``: a human verdict on one published video (keyed by SKU).

    Self-contained: it carries what the reviewer saw (prompt, product card, video, scores) and how the video
    was made (template, style, model, seed), so reports and training exports read this topic alone.
    The first verdict per request key counts; ``event_id`` is ``review-<claim id>``.
    """

    request_key: Sha256Hex
    sku: Sku
    variant_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    verdict: Verdict
    reason: RejectReason | None = Field(default=None, description="Rejected: why; approved: null.")
    note: Annotated[str, StringConstraints(max_length=500)] = Field(default="", description="Required for other.")
    reviewer: ReviewerId
    claim_id: ClaimId
    causes: list[ReviewCause] = Field(max_length=4, description="Why the video was in the queue.")
    template_id: str
    template_version: int | None = Field(default=None, description="Null when the plan was no longer readable.")
    style: str | None = None
    category: Annotated[str, StringConstraints(max_length=64)] | None = None
    model: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    seed: int
    prompt: str
    product: ReviewedProduct
    video_url: str
    poster_url: str
    quality: QualityReport
    rendered_at: AwareDatetime
    rerender_generation: int = Field(default=0, ge=0, description="0: planned video; n: its n-th re-render.")

    @model_validator(mode="after")
    def _reason_matches_verdict(self) -> VideoReviewed:
        if self.verdict is Verdict.REJECTED and self.reason is None:
            raise ValueError("a rejected video needs a reason")
        if self.verdict is Verdict.APPROVED and self.reason is not None:
            raise ValueError("an approved video has no reason")
        if self.reason is RejectReason.OTHER and not self.note.strip():
            raise ValueError("reason other needs a note")
        return self


class VideoWithdrawn(Event):
    """``video.withdrawn``: a published video is no longer served (keyed by SKU).

    The listing API's index stops serving ``request_key`` when it reads this (the listing falls back to the
    SKU's next variant, or to none); ``refuse`` also refuses the product until a newer plan of it (its data
    changed); ``rerender`` carries the new request sent to the hot lane (same prompt, new seed and key).
    """

    request_key: Sha256Hex
    sku: Sku
    variant_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    reason: RejectReason
    review_event_id: EventId = Field(description="The VideoReviewed that caused it.")
    action: WithdrawalAction
    rerender: VideoRequested | None = Field(default=None, description="rerender: the request sent.")
    rerender_generation: int = Field(default=0, ge=0, description="rerender: which re-render of the lineage.")

    @model_validator(mode="after")
    def _rerender_matches_action(self) -> VideoWithdrawn:
        if (self.action is WithdrawalAction.RERENDER) != (self.rerender is not None):
            raise ValueError("a rerender request goes with action rerender, and only with it")
        return self
