"""The video index: for each SKU what the listing plays now, materialised from Kafka (plain Python, no I/O).

Sources, each read from the beginning of every partition (``api.feed``), so a restarted or added replica
rebuilds the same state; every replica holds a full copy and answers for every SKU:

* ``video.planned`` (compacted, one record per SKU variant): the current plan — request key, lane, sent at
  once or held for the first view, promo window (the overlay's ``valid_from``/``valid_until``) and where
  the full request lies (partition, offset), so a held one can be sent byte for byte;
* ``video.ready``: videos by request key, and the newest one per SKU variant (served while a newer plan of
  that variant renders: stale-while-revalidate; kept aside as an orphan while the variant has no plan);
* ``video.failed``: render failures by request key; planning refusals by SKU and source event (unsafe
  content, and ``unknown_sku`` for SKUs a promo lists that the catalog does not know);
* ``video.requested.ondemand``: ``POST /v1/videos`` ids, and the held requests first views have sent;
* ``promo.started``: promo ids, their event ids, listed SKUs and windows;
* ``video.withdrawn``: videos rejected in review are never served again (the listing falls back to the SKU's
  next variant, or to none); a ``refuse`` withdrawal refuses the product until a newer daily plan (its data
  changed), a ``rerender`` one answers ``pending`` until the re-render (same variant, new key) is ready.

Observers (``observe``) see every record after the index applied it, and name further topics the feed reads for
them: the review queue (``review.book``) is kept this way on every replica.

Every ``apply_*`` is independent of the order the topics are read in: a rebuild interleaves them arbitrarily.
Queries take the wall clock ``now`` (epoch seconds): at a promo's ``valid_until`` its variant stops being
served and the daily one is served again, with no render.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from os.path import commonprefix
from sys import intern
from typing import TYPE_CHECKING, Protocol

from api.selection import choose_arm, experiment_id
from schemas.events import (
    Lane,
    Locale,
    PromoStarted,
    Reason,
    VideoFailed,
    VideoPlanned,
    VideoReady,
    VideoRequested,
    VideoWithdrawn,
    WithdrawalAction,
)

if TYPE_CHECKING:
    from schemas.topics import Topic

ONDEMAND_PREFIX = "ondemand-"  # variant id of POST /v1/videos renders: "ondemand-<video id>"
MAX_REFUSALS = 4  # planning refusals kept per SKU (the newest decide)
THROUGHPUT_SAMPLES = 256  # newest video.ready times the throughput is measured over …
THROUGHPUT_WINDOW_S = 1800.0  # … as far back as this from the newest one
LOCALES = frozenset(locale.value for locale in Locale)
REVIEW_REJECTED = "review_rejected"  # reason of a refusal or miss caused by a rejected video


@dataclass(slots=True)
class Slot:
    """The current plan of one SKU variant."""

    variant_id: str
    request_key: str
    lane: Lane
    dispatched: bool  # sent to a render lane (eager, or enqueued by a first view); False: held
    promo_id: str | None
    valid_from: float | None  # epoch seconds
    valid_until: float | None
    language: str
    planned_at: float
    partition: int  # of the video.planned record holding the full request
    offset: int
    ready_key: str | None = None  # newest video of this variant (maybe of an older plan: served meanwhile)
    template_version: int | None = None


@dataclass(slots=True, frozen=True)
class Video:
    """A rendered video's URLs. The MP4 and poster URLs of one video share all but their endings, so their
    common prefix is kept once (a third of the index's memory otherwise); the URLs are rebuilt exactly."""

    prefix: str
    video_end: str
    poster_end: str
    feed_video_url: str | None
    ready_at: float

    @classmethod
    def of(cls, video_url: str, poster_url: str, feed_video_url: str | None, ready_at: float) -> Video:
        n = len(commonprefix([video_url, poster_url]))
        return cls(video_url[:n], intern(video_url[n:]), intern(poster_url[n:]), feed_video_url, ready_at)

    @property
    def video_url(self) -> str:
        return self.prefix + self.video_end

    @property
    def poster_url(self) -> str:
        return self.prefix + self.poster_end


@dataclass(slots=True, frozen=True)
class Failure:
    reason: str
    message: str


@dataclass(slots=True, frozen=True)
class Refusal:
    """A planning-level refusal of a SKU (no request key): by a product event, or by a promo's."""

    reason: str
    message: str
    source_event_id: str | None
    at: float


@dataclass(slots=True)
class SkuEntry:
    slots: dict[str, Slot] = field(default_factory=dict)  # variant id -> current plan
    refusals: list[Refusal] | None = None


@dataclass(slots=True, frozen=True)
class Withdrawal:
    """A video rejected in review: never served again; ``rerender_key``: its re-render, when one was sent."""

    action: str
    reason: str
    rerender_key: str | None


class IndexObserver(Protocol):
    """Sees every record the feed applies (after the index did), and names the further topics it needs."""

    topics: tuple[Topic, ...]

    def apply(self, topic: str, event: object, partition: int, offset: int) -> None: ...


@dataclass(slots=True, frozen=True)
class OnDemand:
    """A ``POST /v1/videos`` render: the first record of its id on the on-demand lane."""

    request_key: str
    partition: int
    offset: int


@dataclass(slots=True, frozen=True)
class PromoInfo:
    event_ids: frozenset[str]
    listed: frozenset[str]
    starts_at: float
    ends_at: float


@dataclass(frozen=True)
class Served:
    """A video to play. ``held``: slots of the served group whose newer plan is held (refresh on this view)."""

    sku: str
    variant_id: str
    request_key: str
    video: Video
    promo_id: str | None
    valid_until: float | None
    experiment_id: str | None
    held: tuple[Slot, ...] = ()


@dataclass(frozen=True)
class Missing:
    """No video to play now. ``held``: planned requests waiting for this first view to be sent."""

    status: str  # pending | refused | unknown
    reason: str
    message: str
    held: tuple[Slot, ...] = ()


@dataclass(frozen=True)
class PromoReport:
    promo_id: str
    targeted: int
    planned: int
    ready: int
    failed: dict[str, int]
    unknown_skus: list[str]
    eta_s: float | None
    starts_at: float | None
    ends_at: float | None


@dataclass(frozen=True)
class OnDemandReport:
    status: str  # queued (the caller refines rendering) | ready | failed
    entry: OnDemand
    video: Video | None = None
    failure: Failure | None = None


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def as_datetime(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts is not None else None


class VideoIndex:
    def __init__(self, variant_experiment: str = "skuvid-variants") -> None:
        self.variant_experiment = variant_experiment
        self.skus: dict[str, SkuEntry] = {}
        self.videos: dict[str, Video] = {}  # request key -> video
        self.failed: dict[str, Failure] = {}  # request key -> render failure
        self.ondemand: dict[str, OnDemand] = {}  # video id -> its request
        self.enqueued: set[str] = set()  # keys first views sent whose plan has not been read yet
        self.backlog: dict[str, float] = {}  # dispatched hot/on-demand keys not yet done -> planned at
        self.promos: dict[str, PromoInfo] = {}
        self.promo_events: set[str] = set()  # event ids of every promo.started
        self.promo_slots: dict[str, set[tuple[str, str]]] = {}  # promo id -> (sku, variant id)
        self.promo_unknown: dict[str, set[str]] = {}  # promo id -> listed SKUs the catalog does not know
        self.source_failures: dict[str, dict[str, str]] = {}  # source event id -> sku -> reason (planning)
        self.ready_times: deque[float] = deque(maxlen=THROUGHPUT_SAMPLES)
        # Videos of variants with no plan record (yet): read before their plan, or older than video.planned.
        self.orphans: dict[str, dict[str, str]] = {}  # sku -> variant id -> newest request key
        self.withdrawn: dict[str, Withdrawal] = {}  # request key -> why it is no longer served
        self.observers: list[IndexObserver] = []

    def observe(self, observer: IndexObserver) -> None:
        """Forward every applied record to ``observer`` from now on (register before the feed starts)."""
        self.observers.append(observer)

    def observed_topics(self) -> tuple[Topic, ...]:
        return tuple(topic for observer in self.observers for topic in observer.topics)

    # --- applying events ------------------------------------------------------------------------------

    def apply(self, topic: str, event: object, partition: int, offset: int) -> None:
        """One decoded record of an index topic (see the module docstring)."""
        if isinstance(event, VideoPlanned):
            self.apply_planned(event, partition, offset)
        elif isinstance(event, VideoReady):
            self.apply_ready(event)
        elif isinstance(event, VideoFailed):
            self.apply_failed(event)
        elif isinstance(event, VideoRequested):
            self.apply_ondemand(event, partition, offset)
        elif isinstance(event, PromoStarted):
            self.apply_promo(event)
        elif isinstance(event, VideoWithdrawn):
            self.apply_withdrawn(event)
        for observer in self.observers:
            observer.apply(topic, event, partition, offset)

    def apply_planned(self, event: VideoPlanned, partition: int, offset: int) -> None:
        request = event.request
        overlay = next((o for o in request.prompt.overlays if o.promo_id), None)
        key = intern(request.request_key)  # shared with video.ready's copy: one string per video
        dispatched = event.dispatched
        if key in self.enqueued:  # a first view sent it before this replica read the plan
            self.enqueued.discard(key)
            dispatched = True
        slot = Slot(
            variant_id=intern(request.variant_id), request_key=key, lane=request.lane, dispatched=dispatched,
            promo_id=intern(overlay.promo_id) if overlay and overlay.promo_id else None,
            valid_from=_ts(overlay.valid_from) if overlay else None,
            valid_until=_ts(overlay.valid_until) if overlay else None,
            language=request.prompt.language.value, planned_at=request.occurred_at.timestamp(),
            partition=partition, offset=offset, template_version=request.prompt.template_version,
        )
        entry = self.skus.get(request.sku)
        if entry is None:
            entry = self.skus[request.sku] = SkuEntry()
        previous = entry.slots.get(slot.variant_id)
        slot.ready_key = self._newest(previous.ready_key if previous else None,
                                      self._pop_orphan(request.sku, slot.variant_id))
        entry.slots[slot.variant_id] = slot
        if slot.promo_id is not None:
            self.promo_slots.setdefault(slot.promo_id, set()).add((request.sku, request.variant_id))
        if event.dispatched and request.lane is Lane.HOT:  # first-view sends joined the backlog when read
            self._add_backlog(key, slot.planned_at)

    def remove_planned(self, slot_key: str) -> None:
        """A tombstone on ``video.planned`` (``sku|variant_id``): the variant is no longer planned."""
        sku, _, variant = slot_key.partition("|")
        entry = self.skus.get(sku)
        slot = entry.slots.pop(variant, None) if entry is not None else None
        if slot is not None and slot.ready_key is not None:
            self.orphans.setdefault(sku, {})[variant] = slot.ready_key

    def _pop_orphan(self, sku: str, variant: str) -> str | None:
        variants = self.orphans.get(sku)
        if not variants:
            return None
        key = variants.pop(variant, None)
        if not variants:
            del self.orphans[sku]
        return key

    def _newest(self, *keys: str | None) -> str | None:
        """The key of the most recently ready video among ``keys`` (None when none is ready)."""
        ready = [(self.videos[k].ready_at, k) for k in keys if k is not None and k in self.videos]
        return max(ready)[1] if ready else None

    def apply_ready(self, event: VideoReady) -> None:
        key = intern(event.request_key)
        if key in self.withdrawn:  # rejected in review (the withdrawal was read first): never served
            self.backlog.pop(key, None)
            return
        at = event.occurred_at.timestamp()
        if key not in self.videos:
            self.ready_times.append(at)
        self.videos[key] = Video.of(event.video_url, event.poster_url, event.feed_video_url, at)
        self.backlog.pop(key, None)
        self.enqueued.discard(key)
        if event.variant_id.startswith(ONDEMAND_PREFIX):
            return
        entry = self.skus.get(event.sku)
        slot = entry.slots.get(event.variant_id) if entry is not None else None
        if slot is not None:
            slot.ready_key = self._newest(slot.ready_key, key)
        else:
            variants = self.orphans.setdefault(event.sku, {})
            variants[intern(event.variant_id)] = self._newest(variants.get(event.variant_id), key) or key

    def apply_failed(self, event: VideoFailed) -> None:
        if event.request_key is not None:
            self.failed[event.request_key] = Failure(event.reason.value, event.message)
            self.backlog.pop(event.request_key, None)
            return
        if event.sku is None:
            return
        if event.source_event_id is not None:
            self.source_failures.setdefault(event.source_event_id, {})[event.sku] = event.reason.value
        promo_id = event.details.get("promo_id")
        if event.reason is Reason.UNKNOWN_SKU and isinstance(promo_id, str):
            self.promo_unknown.setdefault(promo_id, set()).add(event.sku)
            return  # not a product: no index entry
        entry = self.skus.get(event.sku)
        if entry is None:
            entry = self.skus[event.sku] = SkuEntry()
        refusal = Refusal(event.reason.value, event.message, event.source_event_id, event.occurred_at.timestamp())
        entry.refusals = sorted([*(entry.refusals or ()), refusal], key=lambda r: r.at)[-MAX_REFUSALS:]

    def apply_withdrawn(self, event: VideoWithdrawn) -> None:
        """A video rejected in review: forget it wherever it could be served from; ``refuse`` also refuses the
        product (until a newer daily plan whose video is not withdrawn)."""
        key = event.request_key
        rerender = event.rerender.request_key if event.rerender is not None else None
        self.withdrawn[key] = Withdrawal(event.action.value, event.reason.value, rerender)
        self.videos.pop(key, None)
        entry = self.skus.get(event.sku)
        for slot in entry.slots.values() if entry is not None else ():
            if slot.ready_key == key:
                slot.ready_key = None
        variants = self.orphans.get(event.sku)
        if variants:
            for variant in [v for v, k in variants.items() if k == key]:
                del variants[variant]
        if event.action is WithdrawalAction.REFUSE:
            if entry is None:
                entry = self.skus[event.sku] = SkuEntry()
            refusal = Refusal(REVIEW_REJECTED, f"{event.sku}: its video was rejected in review ({event.reason.value}); "
                              "no video until the product changes", event.event_id, event.occurred_at.timestamp())
            if refusal not in (entry.refusals or ()):
                entry.refusals = sorted([*(entry.refusals or ()), refusal], key=lambda r: r.at)[-MAX_REFUSALS:]

    def apply_ondemand(self, request: VideoRequested, partition: int, offset: int) -> None:
        """A record of the on-demand lane: a ``POST /v1/videos`` render, or a held request a first view sent."""
        key = request.request_key
        if request.variant_id.startswith(ONDEMAND_PREFIX):
            video_id = request.variant_id.removeprefix(ONDEMAND_PREFIX)
            if video_id not in self.ondemand:
                self.ondemand[video_id] = OnDemand(key, partition, offset)
                self._add_backlog(key, request.occurred_at.timestamp())
            return
        self._add_backlog(key, request.occurred_at.timestamp())
        entry = self.skus.get(request.sku)
        slot = entry.slots.get(request.variant_id) if entry else None
        if slot is not None and slot.request_key == key:
            slot.dispatched = True
        elif key not in self.videos:
            self.enqueued.add(key)

    def apply_promo(self, event: PromoStarted) -> None:
        known = self.promos.get(event.promo_id)
        self.promos[event.promo_id] = PromoInfo(
            event_ids=frozenset({event.event_id, *(known.event_ids if known else ())}),
            listed=frozenset(event.skus), starts_at=event.starts_at.timestamp(), ends_at=event.ends_at.timestamp(),
        )
        self.promo_events.add(event.event_id)

    def mark_dispatched(self, slot: Slot, dispatched: bool = True) -> None:
        """A first view is sending ``slot`` (or, ``dispatched=False``, sending it failed: a later view retries)."""
        slot.dispatched = dispatched
        if dispatched:
            self._add_backlog(slot.request_key, slot.planned_at)
        else:
            self.backlog.pop(slot.request_key, None)

    def _add_backlog(self, key: str, planned_at: float) -> None:
        if key not in self.videos and key not in self.failed:
            self.backlog.setdefault(key, planned_at)

    # --- lookups --------------------------------------------------------------------------------------

    def lookup(self, sku: str, *, now: float, user: str | None = None, region: str | None = None) -> Served | Missing:
        """What the listing of ``sku`` plays at ``now`` for ``user`` (see ``api.selection`` for the A/B rule).

        Order: the promo variant inside its window (the most recently started promo first), else the daily one;
        a group whose planned arms have no video yet falls back to a variant of the same group that has one."""
        entry = self.skus.get(sku)
        if entry is None:
            return self._unplanned_daily(sku) or Missing(
                "unknown", "unknown_sku", f"no product {sku} in the catalog the index has read")
        refusal = self._product_refusal(entry)
        if refusal is not None:
            return Missing("refused", refusal.reason, refusal.message)
        groups = self._groups(entry, now)
        for group, slots in groups:
            served = self._serve(sku, entry, group, slots, user, region)
            if served is not None:
                return served
        stale = self._unplanned_daily(sku)
        if stale is not None:
            return stale
        return self._missing(sku, [s for _, slots in groups for s in slots])

    def _groups(self, entry: SkuEntry, now: float) -> list[tuple[str, list[Slot]]]:
        promos: dict[str, list[Slot]] = {}
        daily: list[Slot] = []
        for slot in entry.slots.values():
            if slot.promo_id is None:
                daily.append(slot)
            elif (slot.valid_from or 0.0) <= now < (slot.valid_until if slot.valid_until is not None else now + 1):
                promos.setdefault(slot.promo_id, []).append(slot)
        ordered = sorted(promos.items(), key=lambda item: (-(item[1][0].valid_from or 0.0), item[0]))
        return [*ordered, ("daily", daily)] if daily else ordered

    def _serve(self, sku: str, entry: SkuEntry, group: str, slots: list[Slot], user: str | None,
               region: str | None) -> Served | None:
        if region in LOCALES:
            slots = [s for s in slots if s.language == region] or slots
        by_variant = {s.variant_id: s for s in slots}
        experiment = experiment_id(self.variant_experiment, group)
        arm = choose_arm(experiment, list(by_variant), user)
        for variant in [arm, *sorted(v for v in by_variant if v != arm)]:
            slot = by_variant[variant]
            key = slot.request_key if slot.request_key in self.videos else slot.ready_key
            video = self.videos.get(key) if key is not None else None
            if video is None:
                continue
            held = tuple(s for s in slots if not s.dispatched and s.request_key not in self.videos
                         and s.request_key not in self.failed)
            return Served(sku=sku, variant_id=variant, request_key=key, video=video, promo_id=slot.promo_id,
                          valid_until=slot.valid_until,
                          experiment_id=experiment if user is not None and len(by_variant) > 1 else None,
                          held=held)
        return None

    def _unplanned_daily(self, sku: str) -> Served | None:
        """A video whose variant has no plan record (rendered before ``video.planned`` existed): daily only."""
        variants = self.orphans.get(sku, {})
        for variant in sorted(variants):
            if variant.startswith("promo-"):
                continue
            key = variants[variant]
            video = self.videos.get(key)
            if video is not None:
                return Served(sku=sku, variant_id=variant, request_key=key, video=video, promo_id=None,
                              valid_until=None, experiment_id=None)
        return None

    def _missing(self, sku: str, candidates: list[Slot]) -> Missing:
        pending = [s for s in candidates if s.request_key not in self.videos and s.request_key not in self.failed
                   and s.request_key not in self.withdrawn]
        if pending:
            held = tuple(s for s in pending if not s.dispatched)
            if held:
                return Missing("pending", "render_on_first_view",
                               f"{sku}: its video is rendered on first view; this view queued it", held=held)
            return Missing("pending", "render_queued", f"{sku}: its video is queued or rendering")
        for slot in candidates:
            failure = self.failed.get(slot.request_key)
            if failure is not None:
                return Missing("refused", failure.reason, failure.message)
            withdrawal = self.withdrawn.get(slot.request_key)
            if withdrawal is not None:
                rerender = withdrawal.rerender_key
                if rerender is not None and rerender in self.failed:
                    failure = self.failed[rerender]
                    return Missing("refused", failure.reason, failure.message)
                if rerender is not None:
                    return Missing("pending", "rerender_queued",
                                   f"{sku}: its video was withdrawn after review; a re-render is queued")
                return Missing("refused", REVIEW_REJECTED, f"{sku}: its video was withdrawn after review")
        return Missing("unknown", "no_current_variant", f"{sku}: no variant is planned for now")

    def _product_refusal(self, entry: SkuEntry) -> Refusal | None:
        """The newest refusal of the product itself (not of a promo), when no daily plan is newer."""
        if not entry.refusals:
            return None
        own = [r for r in entry.refusals if r.source_event_id not in self.promo_events]
        if not own:
            return None
        newest = own[-1]
        planned = [s.planned_at for s in entry.slots.values() if s.promo_id is None and s.request_key not in self.withdrawn]
        return newest if not planned or newest.at > max(planned) else None

    # --- on-demand and campaigns ----------------------------------------------------------------------

    def video_status(self, video_id: str) -> OnDemandReport | None:
        entry = self.ondemand.get(video_id)
        if entry is None:
            return None
        video = self.videos.get(entry.request_key)
        if video is not None:
            return OnDemandReport("ready", entry, video=video)
        failure = self.failed.get(entry.request_key)
        if failure is not None:
            return OnDemandReport("failed", entry, failure=failure)
        return OnDemandReport("queued", entry)

    def promo_status(self, promo_id: str) -> PromoReport | None:
        info = self.promos.get(promo_id)
        members = self.promo_slots.get(promo_id, set())
        unknown = self.promo_unknown.get(promo_id, set())
        if info is None and not members and not unknown:
            return None
        failed: Counter[str] = Counter()
        ready, pending = 0, []
        for sku, variant in members:
            slot = self.skus[sku].slots.get(variant)
            if slot is None:
                continue
            if slot.request_key in self.videos:
                ready += 1
            elif slot.request_key in self.failed:
                failed[self.failed[slot.request_key].reason] += 1
            else:
                pending.append(slot)
        refused: dict[str, str] = {}
        for event_id in info.event_ids if info else ():
            refused |= self.source_failures.get(event_id, {})
        refused |= dict.fromkeys(unknown, Reason.UNKNOWN_SKU.value)
        failed.update(refused.values())
        targeted = (info.listed if info else set()) | {sku for sku, _ in members} | refused.keys()
        return PromoReport(
            promo_id=promo_id, targeted=len(targeted), planned=len(members), ready=ready, failed=dict(failed),
            unknown_skus=sorted(unknown), eta_s=self.eta_s(pending),
            starts_at=info.starts_at if info else None, ends_at=info.ends_at if info else None,
        )

    def throughput_per_s(self) -> float | None:
        """Videos per second all renderers together published lately (from ``video.ready`` times)."""
        if len(self.ready_times) < 2:
            return None
        newest = max(self.ready_times)
        recent = [t for t in self.ready_times if t >= newest - THROUGHPUT_WINDOW_S]
        span = newest - min(recent)
        return (len(recent) - 1) / span if len(recent) > 1 and span > 0 else None

    def eta_s(self, pending: list[Slot]) -> float | None:
        """Seconds until the last of ``pending`` is rendered: the backlog of the hot and on-demand lanes planned
        no later than it (renderers take those lanes first, oldest first) over the measured throughput."""
        if not pending:
            return 0.0
        rate = self.throughput_per_s()
        if rate is None:
            return None
        last = max(s.planned_at for s in pending)
        ahead = sum(1 for planned_at in self.backlog.values() if planned_at <= last)
        return round(max(ahead, len(pending)) / rate, 1)
