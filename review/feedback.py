"""What a rejection causes: ``video.withdrawn`` and, per reason, a re-render with a new seed or a refusal.

Pure functions: the same verdict always yields the same events (event ids from the claim, the seed from the
withdrawn request key and the generation), so publishing them again after a crash, from any replica,
changes nothing — the index and the renderer see the same keys.

* Reasons in ``Settings.review_rerender_reasons`` (default: visual artefacts, garbled text, other) re-render:
  the withdrawn request with a new seed — hence a new request key (``consumers.planning.request_key``) — on
  the hot lane, its ``source_event_id`` the verdict's event id; at most ``review_max_rerenders`` times per
  lineage, then the product is refused.
* The others (wrong product, unsafe, off-brand: the prompt or the data is at fault, a new seed would not
  help) refuse the product until its data changes (a newer plan).
* When the request can no longer be read (its plan was superseded: the product changed and renders anew
  anyway), the video is only withdrawn.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from consumers.planning import request_key as make_request_key
from schemas.events import (
    Lane,
    Reason,
    RejectReason,
    VideoRequested,
    VideoReviewed,
    VideoWithdrawn,
    WithdrawalAction,
)
from skuvid.errors import FatalError
from skuvid.settings import Settings


@dataclass(frozen=True)
class FeedbackPolicy:
    rerender_reasons: frozenset[RejectReason]
    max_rerenders: int

    @classmethod
    def from_settings(cls, settings: Settings) -> FeedbackPolicy:
        """Raises ``FatalError`` naming an unknown reason in ``review_rerender_reasons``."""
        known = {r.value: r for r in RejectReason}
        unknown = [r for r in settings.review_rerender_reasons if r not in known]
        if unknown:
            raise FatalError(f"SKUVID_REVIEW_RERENDER_REASONS: unknown reasons {unknown}; known: {sorted(known)}",
                             reason=Reason.INVALID_PARAMS)
        return cls(frozenset(known[r] for r in settings.review_rerender_reasons), settings.review_max_rerenders)

    def action(self, reason: RejectReason, generation: int, request: VideoRequested | None) -> WithdrawalAction:
        """``generation``: re-renders of the rejected video's lineage so far (0: it is the planned video)."""
        if reason not in self.rerender_reasons or generation >= self.max_rerenders:
            return WithdrawalAction.REFUSE
        return WithdrawalAction.RERENDER if request is not None else WithdrawalAction.WITHDRAW


def rerender_seed(withdrawn_key: str, generation: int) -> int:
    """A seed fixed by the withdrawn video and the re-render's generation (0 <= seed < 2**63)."""
    digest = hashlib.sha256(f"skuvid-rerender:{withdrawn_key}:{generation}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def rerender_request(request: VideoRequested, reviewed: VideoReviewed, generation: int,
                     now: datetime) -> VideoRequested:
    """``request`` again with a new seed and key, on the hot lane, caused by ``reviewed``."""
    params = request.params.model_copy(update={"seed": rerender_seed(request.request_key, generation)})
    key = make_request_key(request.model, request.prompt, request.image_url, params)
    return request.model_copy(update={
        "event_id": f"req-{key[:32]}", "occurred_at": now, "request_key": key, "lane": Lane.HOT, "params": params,
        "source_event_id": reviewed.event_id,
    })


def withdrawal(reviewed: VideoReviewed, request: VideoRequested | None, *, generation: int, policy: FeedbackPolicy,
               now: datetime) -> VideoWithdrawn:
    """The withdrawal a rejection ``reviewed`` causes; ``request``: the rejected video's request (None when it
    cannot be read any more); ``generation``: re-renders of its lineage so far."""
    assert reviewed.reason is not None, "only rejections are withdrawn"
    action = policy.action(reviewed.reason, generation, request)
    rerender = (rerender_request(request, reviewed, generation + 1, now)
                if action is WithdrawalAction.RERENDER and request is not None else None)
    return VideoWithdrawn(
        event_id=f"withdrawn-{reviewed.claim_id}", occurred_at=now, request_key=reviewed.request_key,
        sku=reviewed.sku, variant_id=reviewed.variant_id, reason=reviewed.reason, review_event_id=reviewed.event_id,
        action=action, rerender=rerender, rerender_generation=generation + 1 if rerender is not None else 0,
    )
