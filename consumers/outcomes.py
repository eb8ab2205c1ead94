"""Outcome events built from classified failures: ``video.failed`` and dead letters, bounded by construction.

Whatever an error drags along (a 6 MB URL in its message, a huge detail), the event built here fits far under
the broker's record limit: the message and each detail are cut to their bounds and ``truncated`` says so.
Publishing an outcome therefore can never be what fails and crash-loops a partition.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

from schemas.events import MAX_DETAIL_CHARS, MAX_DETAILS, MAX_MESSAGE_CHARS, DeadLetter, Reason, VideoFailed
from skuvid.errors import Classified, classify

# Keep at most 512 KiB of an oversized record: base64 makes it ~683 KiB, so the dead letter stays under a
# broker's default 1 MB message limit (message.max.bytes) and under skuvid's own 1 MiB record limit.
MAX_KEPT_BYTES = 512 * 1024


def failed_event(
    failure: Classified | BaseException, *, sku: str | None, source_event_id: str | None,
    request_key: str | None = None, attempts: int = 1, **details: object,
) -> VideoFailed:
    """A bounded ``video.failed`` for ``failure`` (an exception is classified first).

    The event id is a hash of what identifies the failure, so a redelivered record fails with the same id."""
    classified = failure if isinstance(failure, Classified) else classify(failure)
    merged = {**classified.details, **details}
    kept, cut = _bounded_details(merged)
    message = classified.message or classified.reason.value
    truncated = cut or len(message) > MAX_MESSAGE_CHARS
    identity = f"{source_event_id}|{sku}|{request_key}|{classified.reason}|{sorted(kept.items(), key=str)}"
    return VideoFailed(
        event_id=f"fail-{hashlib.sha256(identity.encode()).hexdigest()[:32]}",
        occurred_at=datetime.now(UTC),
        reason=classified.reason,
        message=_cut(message, MAX_MESSAGE_CHARS),
        sku=_cut(sku, 64) if sku else None,
        request_key=request_key,
        source_event_id=_cut(source_event_id, 128) if source_event_id else None,
        attempts=max(1, attempts),
        details=kept,
        truncated=truncated,
    )


def dead_letter(
    *, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, reason: Reason, message: str
) -> DeadLetter:
    """The original record (up to 1 MiB of it), where it came from, and why nobody could process it."""
    value = value or b""
    kept = value[:MAX_KEPT_BYTES]
    return DeadLetter(
        reason=reason,
        message=_cut(message, MAX_MESSAGE_CHARS),
        topic=topic,
        partition=partition,
        offset=offset,
        key_b64=base64.b64encode(key[:1024]).decode() if key is not None else None,
        value_b64=base64.b64encode(kept).decode(),
        value_truncated=len(kept) < len(value),
        failed_at=datetime.now(UTC),
    )


def _bounded_details(details: dict[str, object]) -> tuple[dict[str, str | float | int | bool | None], bool]:
    kept: dict[str, str | float | int | bool | None] = {}
    cut = len(details) > MAX_DETAILS
    for name, value in list(details.items())[:MAX_DETAILS]:
        if value is None or isinstance(value, (bool, int, float)):
            kept[_cut(str(name), 64)] = value
            continue
        text = value if isinstance(value, str) else repr(value)
        cut = cut or len(text) > MAX_DETAIL_CHARS or len(str(name)) > 64
        kept[_cut(str(name), 64)] = _cut(text, MAX_DETAIL_CHARS)
    return kept, cut


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
