"""The one exception the prompt engine raises for bad content or parameters."""

from __future__ import annotations

from schemas.events import Reason
from skuvid.errors import SkuvidError


class ContentRefused(SkuvidError):
    """A product (or variant) that gets no prompt, and so no video.

    ``reason`` is ``Reason.UNSAFE_CONTENT`` (a safety list matched), ``Reason.EMPTY_CONTENT`` (nothing usable
    left after cleaning) or ``Reason.INVALID_PARAMS`` (e.g. a style not in the curated list); ``rule`` names
    what decided it (``"<list>:<term>"``, ``"empty"``, ``"style:<value>"``); ``str(exc)`` is ``message``.
    """

    def __init__(self, reason: Reason, rule: str, message: str) -> None:
        super().__init__(message, reason=reason, details={"rule": rule})
        self.rule = rule

    def __reduce__(self) -> tuple[type[ContentRefused], tuple[Reason, str, str]]:
        return type(self), (self.reason, self.rule, self.message)

    def __str__(self) -> str:
        return self.message
