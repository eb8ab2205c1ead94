"""Who may review: reviewer ids with their tokens (``Settings.review_reviewers``, ``id:token,id:token``).

A request proves its reviewer with ``Authorization: Bearer TOKEN`` or basic auth ``id:TOKEN`` (what a browser
prompts for); tokens are compared in constant time. Verdicts carry the reviewer id this resolves to, never
one the client names. Basic auth is sent by browsers to any page of the origin, so state-changing routes
take JSON bodies only (a cross-site form cannot send ``application/json`` without a CORS preflight).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re

from pydantic import SecretStr

from schemas.events import Reason
from skuvid.errors import FatalError

REVIEWER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_TOKEN_CHARS = 8
REALM = 'Basic realm="skuvid review", charset="UTF-8"'


class Reviewers:
    def __init__(self, tokens: dict[str, str]) -> None:
        self._tokens = tokens

    @classmethod
    def parse(cls, secret: SecretStr | None) -> Reviewers:
        """Raises ``FatalError`` (naming the entry, never a token) for an empty list, a bad id, a short token."""
        text = secret.get_secret_value() if secret is not None else ""
        tokens: dict[str, str] = {}
        for n, entry in enumerate(part.strip() for part in text.split(",") if part.strip()):
            reviewer, _, token = entry.partition(":")
            if not REVIEWER_ID.match(reviewer) or len(token) < MIN_TOKEN_CHARS:
                raise FatalError(f"SKUVID_REVIEW_REVIEWERS entry {n + 1} ({reviewer or '?'}): want id:token, an id "
                                 f"of letters, digits and ._@- and a token of {MIN_TOKEN_CHARS}+ characters",
                                 reason=Reason.AUTH_FAILED)
            tokens[reviewer] = token
        if not tokens:
            raise FatalError("review is enabled but SKUVID_REVIEW_REVIEWERS names no reviewer (id:token,…)",
                             reason=Reason.AUTH_FAILED)
        return cls(tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def identify(self, authorization: str | None) -> str | None:
        """The reviewer an ``Authorization`` header proves, or None."""
        if not authorization:
            return None
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer":
            return self._by_token(credentials)
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return None
            reviewer, _, token = decoded.partition(":")
            expected = self._tokens.get(reviewer)
            if expected is not None and hmac.compare_digest(expected.encode(), token.encode()):
                return reviewer
        return None

    def _by_token(self, token: str) -> str | None:
        found = None
        for reviewer, expected in self._tokens.items():  # no early exit: the time does not tell which one
            if hmac.compare_digest(expected.encode(), token.encode()):
                found = reviewer
        return found
