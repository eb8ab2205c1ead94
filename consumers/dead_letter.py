"""Records that no consumer can process go to ``skuvid.dead-letter`` with their original bytes and a reason."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from schemas.events import DeadLetter, Reason

MAX_KEPT_BYTES = 1_048_576  # keep at most 1 MiB of an oversized record, so the dead letter itself fits


def dead_letter(
    *, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, reason: Reason, message: str
) -> DeadLetter:
    value = value or b""
    kept = value[:MAX_KEPT_BYTES]
    return DeadLetter(
        reason=reason,
        message=message[:2000],
        topic=topic,
        partition=partition,
        offset=offset,
        key_b64=base64.b64encode(key).decode() if key is not None else None,
        value_b64=base64.b64encode(kept).decode(),
        value_truncated=len(kept) < len(value),
        failed_at=datetime.now(UTC),
    )
