"""The listing API's behaviour over the index: lookups with render-on-first-view, on-demand submits, status.

Kafka is reached only through three injected callables, so tests drive this with fakes:

* ``publish(topic, event, key)`` — send one event and wait for the broker's acknowledgement;
* ``read_planned(partition, offset)`` — the ``VideoPlanned`` record a held slot points at (``api.planned``);
* ``committed()`` — the renderers' committed offsets on the on-demand lane, by partition (``api.progress``).

Render on first view: a lookup of a known SKU with no video, whose planned requests are held (render policy
lazy, or the long tail under auto), sends those requests — exactly as the planner recorded them — to the
on-demand lane and answers ``pending``. Each request key is sent once (the slot is marked at once, and every
replica sees the sent record on the lane), and a SKU's held requests are sent at most once per
``Settings.api_enqueue_interval_s``. Sending happens in the background: the listing never waits for Kafka.

With ``Settings.review_enabled`` the service also holds the review desk (``review.desk``, over the same index
and the same injected callables); ``review`` is None otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from pydantic import BaseModel

from api.errors import ApiProblem
from api.index import Missing, OnDemandReport, PromoReport, Served, Slot, VideoIndex
from api.models import VideoCreate
from api.ondemand import build_request, video_id
from inference.prompt import PromptEngine
from schemas.events import VideoPlanned
from schemas.topics import VIDEO_REQUESTED_ONDEMAND, Topic
from skuvid.settings import Settings

log = logging.getLogger(__name__)

Publish = Callable[[Topic, BaseModel, bytes], Awaitable[object]]
ReadPlanned = Callable[[int, int], Awaitable[VideoPlanned | None]]
Committed = Callable[[], Awaitable[dict[int, int]]]
MAX_RATE_ENTRIES = 100_000  # SKUs remembered for the first-view rate limit before old ones are dropped


class ApiService:
    def __init__(self, settings: Settings, index: VideoIndex, engine: PromptEngine, *, publish: Publish,
                 read_planned: ReadPlanned, committed: Committed, is_ready: Callable[[], bool] = lambda: True,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.index = index
        self.engine = engine
        self.publish = publish
        self.read_planned = read_planned
        self.committed = committed
        self.is_ready = is_ready
        self.clock = clock
        self.monotonic = monotonic
        self._last_enqueue: dict[str, float] = {}
        self._tasks: set[asyncio.Task] = set()
        self._submits: dict[str, asyncio.Future[str]] = {}
        self.review = self._review_desk() if settings.review_enabled else None

    def _review_desk(self):
        from review.desk import ReviewDesk  # noqa: PLC0415 - the review package loads only with review on

        return ReviewDesk(self.settings, self.index, self.engine, publish=self.publish,
                          read_planned=self.read_planned, is_ready=lambda: self.is_ready(), clock=self.clock)

    def require_ready(self) -> None:
        if not self.is_ready():
            raise ApiProblem(503, "index_loading", "the video index is still being read from Kafka; retry shortly")

    # --- lookups ----------------------------------------------------------------------------------------

    def lookup(self, sku: str, *, user: str | None, region: str | None) -> Served | Missing:
        self.require_ready()
        result = self.index.lookup(sku, now=self.clock(), user=user, region=region)
        if result.held:
            self._enqueue_first_view(sku, result.held)
        return result

    def _enqueue_first_view(self, sku: str, slots: tuple[Slot, ...]) -> bool:
        now = self.monotonic()
        last = self._last_enqueue.get(sku)
        if last is not None and now - last < self.settings.api_enqueue_interval_s:
            return False
        if len(self._last_enqueue) >= MAX_RATE_ENTRIES:
            horizon = now - self.settings.api_enqueue_interval_s
            self._last_enqueue = {k: t for k, t in self._last_enqueue.items() if t >= horizon}
        self._last_enqueue[sku] = now
        for slot in slots:
            self.index.mark_dispatched(slot)
        task = asyncio.get_running_loop().create_task(self._send_held(sku, slots), name=f"first-view {sku}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _send_held(self, sku: str, slots: tuple[Slot, ...]) -> None:
        for slot in slots:
            try:
                planned = await self.read_planned(slot.partition, slot.offset)
                if planned is None or planned.request.request_key != slot.request_key:
                    log.info("first view of %s: plan %s was superseded before it was sent", sku, slot.request_key)
                    self.index.mark_dispatched(slot, dispatched=False)
                    continue
                await self.publish(VIDEO_REQUESTED_ONDEMAND, planned.request, sku.encode())
                log.info("first view of %s: sent %s %s", sku, slot.variant_id, slot.request_key)
            except Exception as exc:  # noqa: BLE001 - a later view retries; the listing already has its answer
                log.warning("first view of %s: sending %s failed (%s); a later view retries", sku,
                            slot.request_key, exc)
                self.index.mark_dispatched(slot, dispatched=False)
                self._last_enqueue.pop(sku, None)

    async def drain(self) -> None:
        """Wait for first-view sends in progress (shutdown); close the review desk's reader."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.review is not None:
            await self.review.close()

    # --- on-demand renders ------------------------------------------------------------------------------

    async def submit(self, body: VideoCreate, idempotency_key: str) -> str:
        """The id of the render ``body`` asks for; the same ``idempotency_key`` always answers the same id and
        renders once. Raises ``ApiProblem``: 409 when the key was used for another request, 422 when the content
        or parameters are refused, 503 when the on-demand lane cannot be reached."""
        self.require_ready()
        vid = video_id(idempotency_key)
        request = build_request(body, vid=vid, settings=self.settings, engine=self.engine,
                                now=datetime.fromtimestamp(self.clock(), UTC))
        inflight = self._submits.get(vid)
        if inflight is not None:
            await asyncio.shield(inflight)
        known = self.index.ondemand.get(vid)
        if known is not None:
            if known.request_key != request.request_key:
                raise ApiProblem(409, "idempotency_key_reused", "this Idempotency-Key was used for another request",
                                 field="Idempotency-Key")
            return vid
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._submits[vid] = future
        try:
            meta = await self.publish(VIDEO_REQUESTED_ONDEMAND, request, vid.encode())
            self.index.apply_ondemand(request, getattr(meta, "partition", 0), getattr(meta, "offset", 0))
        except Exception as exc:  # noqa: BLE001 - the client may retry with the same key
            log.warning("on-demand %s could not be queued: %s", vid, exc)
            raise ApiProblem(503, "queue_unavailable", "the render queue cannot be reached; retry with the same "
                             "Idempotency-Key") from None
        finally:
            future.set_result(vid)
            del self._submits[vid]
        return vid

    async def video_status(self, vid: str) -> OnDemandReport | None:
        self.require_ready()
        report = self.index.video_status(vid)
        if report is None or report.status != "queued":
            return report
        try:
            committed = await self.committed()
        except Exception as exc:  # noqa: BLE001 - without the offsets "queued" is still true
            log.info("renderer offsets unavailable: %s", exc)
            return report
        entry = report.entry
        head = committed.get(entry.partition)  # None: no renderer committed on it yet, nothing to tell
        return OnDemandReport("rendering", entry) if head is not None and head >= entry.offset else report

    def promo_status(self, promo_id: str) -> PromoReport | None:
        self.require_ready()
        return self.index.promo_status(promo_id)
