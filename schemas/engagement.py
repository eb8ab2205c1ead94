"""Engagement events (topic ``engagement``) and A/B experiment declarations (schema version 1).

Engagement events are written by the listing and storefront services, not by skuvid, so they are read as a
tolerant reader: unknown fields are ignored (a producer may add fields without breaking skuvid), while the
fields skuvid relies on are checked strictly. Experiment declarations are skuvid's own configuration and refuse
unknown fields, like every other boundary model.

The unit of randomisation and of analysis is the user (or session, when there is no login): ``user_id``.
Records should be keyed by it (``engagement_key``); the experiment agent re-keys them by user either way.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, StringConstraints, model_validator

from schemas.events import InputEvent, InputModel, Model, Sku

CONTROL_VARIANT = "none"  # the variant id of the arm that shows no video

ExperimentId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
ArmId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
VariantId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
UserId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class EngagementKind(StrEnum):
    """What the user did; each kind feeds one metric of the experiment report."""

    PAGE_VIEW = "page_view"  # an exposure: the listing was shown, with the arm's video or none
    VIDEO_PLAY = "video_play"  # the product video was played (``watch_time_s``)
    DWELL = "dwell"  # time spent on the listing page (``dwell_s``), sent when the user leaves it
    ADD_TO_CART = "add_to_cart"
    ORDER = "order"


class Metric(StrEnum):
    """Metrics an experiment can be judged by; all are per user (the unit of randomisation)."""

    DWELL = "dwell"  # mean total dwell seconds per exposed user (Welch's t)
    ADD_TO_CART = "add_to_cart"  # share of exposed users who added to cart at least once (two-proportion z)
    ORDER = "order"  # share of exposed users who ordered at least once (two-proportion z)


class PrePeriod(InputModel):
    """The user's behaviour before the experiment started (the CUPED covariates), from the listing's history.

    Sent on a page view when the listing service knows it; each value is the user's total over the pre-period
    window for the same SKU scope. Users without it count as 0 in the covariate (still unbiased).
    """

    dwell_s: float = Field(default=0.0, ge=0, allow_inf_nan=False, description="Total dwell seconds, pre-period.")
    add_to_cart: int = Field(default=0, ge=0, description="Add-to-cart actions in the pre-period.")
    orders: int = Field(default=0, ge=0, description="Orders in the pre-period.")


class EngagementEvent(InputEvent):
    """``engagement``: one user action on a listing that is part of an experiment."""

    kind: EngagementKind = Field(description="What happened.", examples=["page_view"])
    experiment_id: ExperimentId = Field(description="The experiment the user is in.", examples=["exp-video-3c"])
    arm: ArmId = Field(description="The arm the user was assigned to (experiments.assignment).", examples=["video"])
    variant_id: VariantId | None = Field(
        default=None, description="Page views: the video variant shown, or 'none' for control (no video).",
        examples=["daily-a", "none"],
    )
    user_id: UserId = Field(description="User id, or session id for anonymous traffic: the randomisation unit.",
                            examples=["u-829301"])
    sku: Sku = Field(description="The listing's SKU.", examples=["SKU-1001"])
    category: Label = Field(description="The listing's category key.", examples=["3c"])
    channel: Label = Field(description="Where the listing was shown (app, web, mini-program …).", examples=["app"])
    region: Label = Field(description="Market or region of the user.", examples=["CN-31"])
    watch_time_s: float | None = Field(
        default=None, ge=0, le=86_400, allow_inf_nan=False, description="video_play: seconds watched."
    )
    dwell_s: float | None = Field(
        default=None, ge=0, le=86_400, allow_inf_nan=False, description="dwell: seconds on the page."
    )
    pre_period: PrePeriod | None = Field(default=None, description="page_view: CUPED covariates, when known.")

    @model_validator(mode="after")
    def _kind_fields(self) -> EngagementEvent:
        if self.kind is EngagementKind.DWELL and self.dwell_s is None:
            raise ValueError("a dwell event needs dwell_s")
        if self.kind is EngagementKind.VIDEO_PLAY and self.watch_time_s is None:
            raise ValueError("a video_play event needs watch_time_s")
        return self


def engagement_key(event: EngagementEvent) -> bytes:
    """Record key of an engagement event: the user, so one user's events stay in order in one partition."""
    return event.user_id.encode()


class Arm(Model):
    """One arm: what its users see and the share of traffic it gets."""

    arm_id: ArmId = Field(examples=["control", "video"])
    variant_id: VariantId = Field(description="Video variant shown, or 'none' (control: no video).",
                                  examples=["none", "daily-a"])
    weight: float = Field(gt=0, le=1, allow_inf_nan=False, description="Share of all users hashed into this arm.")


class Experiment(Model):
    """An A/B experiment, declared as data (``deploy/experiments/experiments.json``).

    ``arms`` are in declaration order: that order defines the assignment buckets (experiments.assignment), so
    reordering arms or changing weights of a running experiment reassigns users. Weights may sum to less than 1:
    the remaining users are not in the experiment. Exactly one arm has variant ``none``: the control.
    """

    experiment_id: ExperimentId = Field(examples=["exp-video-3c"])
    description: Annotated[str, StringConstraints(max_length=500)] = ""
    arms: list[Arm] = Field(min_length=2, max_length=16)
    skus: list[Sku] = Field(default_factory=list, max_length=10_000, description="SKU scope (empty: any).")
    categories: list[Label] = Field(default_factory=list, max_length=100, description="Category scope (empty: any).")
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    primary_metric: Metric = Metric.ADD_TO_CART
    minimum_detectable_effect: float = Field(
        default=0.1, gt=0, le=10, description="Smallest relative uplift worth detecting (0.1: +10 %): sizes the "
        "power check and the sequential test's mixture."
    )
    alpha: float = Field(default=0.05, gt=0, lt=0.5, description="Two-sided significance level.")
    power: float = Field(default=0.8, gt=0.5, lt=1, description="Wanted power at the minimum detectable effect.")

    @model_validator(mode="after")
    def _check(self) -> Experiment:
        ids = [a.arm_id for a in self.arms]
        if len(set(ids)) != len(ids):
            raise ValueError(f"arm ids must be unique, got {ids}")
        controls = [a.arm_id for a in self.arms if a.variant_id == CONTROL_VARIANT]
        if len(controls) != 1:
            raise ValueError(f"exactly one arm must have variant_id 'none' (the control), got {controls}")
        total = math.fsum(a.weight for a in self.arms)
        if total > 1 + 1e-9:
            raise ValueError(f"arm weights sum to {total}, more than 1")
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self

    @property
    def control(self) -> Arm:
        return next(a for a in self.arms if a.variant_id == CONTROL_VARIANT)

    @property
    def treatments(self) -> list[Arm]:
        return [a for a in self.arms if a.variant_id != CONTROL_VARIANT]

    def arm(self, arm_id: str) -> Arm:
        for a in self.arms:
            if a.arm_id == arm_id:
                return a
        raise KeyError(f"experiment {self.experiment_id} has no arm {arm_id!r}")

    def in_scope(self, sku: str, category: str) -> bool:
        """Whether a listing takes part: in the SKU list or the category list (both empty: every listing)."""
        if not self.skus and not self.categories:
            return True
        return sku in self.skus or category in self.categories


class ExperimentCatalog(Model):
    """The file of declared experiments."""

    schema_version: Literal[1] = 1
    experiments: list[Experiment] = Field(max_length=1000)

    @model_validator(mode="after")
    def _unique(self) -> ExperimentCatalog:
        ids = [e.experiment_id for e in self.experiments]
        if len(set(ids)) != len(ids):
            raise ValueError(f"experiment ids must be unique, got {ids}")
        return self

    def get(self, experiment_id: str) -> Experiment:
        for e in self.experiments:
            if e.experiment_id == experiment_id:
                return e
        known = ", ".join(e.experiment_id for e in self.experiments) or "none"
        raise KeyError(f"no experiment {experiment_id!r} (declared: {known})")

