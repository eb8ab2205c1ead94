"""One failure taxonomy for every stage: what an error *means* decides what happens to the record.

Every error skuvid raises on purpose is a ``SkuvidError`` carrying a machine-readable ``reason``, a human
``message``, small ``details`` and its ``kind``. ``classify`` maps *any* exception — skuvid's own, a
library's, or a bug — to one of four outcomes (arq's ``Retry`` vs permanent failures is the model):

* ``retry``: transient (storage or broker unavailable, an image host timing out, CUDA out of memory).
  The consumer keeps the offset, pauses the partition and tries again later with exponential backoff and
  jitter; after ``Settings.max_attempts`` the request ends as ``video.failed`` with the last reason.
* ``failed``: permanent for this request (unsafe content, bad parameters, an image that is not an image,
  a bug while handling it): ``video.failed`` with the reason, then commit.
* ``dead_letter``: the record itself cannot be understood (not JSON, wrong schema, oversized): the original
  bytes go to the dead-letter topic, then commit.
* ``fatal``: the process cannot work at all (bad credentials, an untrusted CA, a missing model): it exits
  with one clear line and the orchestrator acts.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from schemas.events import Reason


class Outcome(StrEnum):
    RETRY = "retry"
    FAILED = "failed"
    DEAD_LETTER = "dead_letter"
    FATAL = "fatal"


class SkuvidError(Exception):
    """Base of every error skuvid raises on purpose. Subclasses set ``reason`` and ``kind`` as class defaults;
    an instance may override both (an image host that times out is transient, one that is forbidden is not)."""

    reason: Reason = Reason.INTERNAL_ERROR
    kind: Outcome = Outcome.FAILED

    def __init__(self, message: str, *, reason: Reason | None = None, kind: Outcome | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        if kind is not None:
            self.kind = kind
        self.details: dict[str, Any] = dict(details or {})

    @property
    def retryable(self) -> bool:
        return self.kind is Outcome.RETRY

    def __reduce__(self):  # picklable across processes, whatever the subclass's __init__ takes
        return _rebuild, (type(self), self.message, self.reason, self.kind, self.details)


def _rebuild(cls: type[SkuvidError], message: str, reason: Reason, kind: Outcome, details: dict) -> SkuvidError:
    error = cls.__new__(cls)
    SkuvidError.__init__(error, message, reason=reason, kind=kind, details=details)
    return error


class TransientError(SkuvidError):
    """A dependency is unavailable for now: try the same work again later."""

    kind = Outcome.RETRY


class FatalError(SkuvidError):
    """The process cannot do its job (configuration, credentials, model): exit, do not retry records."""

    kind = Outcome.FATAL


@dataclass(frozen=True)
class Classified:
    """What to do about one exception."""

    outcome: Outcome
    reason: Reason
    message: str
    details: dict[str, Any] = field(default_factory=dict)


# Library errors that say "the dependency is down or slow", not "this request is wrong".
_TRANSIENT_NAMES = frozenset({
    # botocore / aiobotocore
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "ProxyConnectionError", "HTTPClientError",
    # aiokafka
    "KafkaConnectionError", "KafkaTimeoutError", "RequestTimedOutError", "NodeNotReadyError",
    "NotLeaderForPartitionError", "LeaderNotAvailableError", "NotEnoughReplicasError",
    "NotEnoughReplicasAfterAppendError", "UnknownTopicOrPartitionError", "CoordinatorNotAvailableError",
    "NotCoordinatorError", "ProducerClosed",
    # aiohttp
    "ClientConnectionError", "ServerDisconnectedError", "ServerTimeoutError",
    # torch
    "OutOfMemoryError",
})
# Library errors that no retry can fix: the process is misconfigured.
_FATAL_NAMES = frozenset({
    "SaslAuthenticationFailed", "SaslAuthenticationFailedError", "UnsupportedSaslMechanismError",
    "IllegalSaslStateError", "AuthenticationFailedError", "AuthenticationMethodNotSupported",
    "TopicAuthorizationFailedError", "GroupAuthorizationFailedError", "ClusterAuthorizationFailedError",
    "TransactionalIdAuthorizationFailed", "NoCredentialsError", "PartialCredentialsError",
})
# S3 error codes that mean "wrong credentials or bucket", and those that mean "try later".
_S3_FATAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "NoSuchBucket"})
# ConditionalRequestConflict: two conditional writes of one key at once; the retry finds the winner's.
_S3_TRANSIENT_CODES = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503", "500",
                                 "ConditionalRequestConflict"})


def classify(exc: BaseException) -> Classified:
    """The outcome for ``exc``. Unknown exceptions are bugs: permanent for the request (``internal_error``),
    never a crash loop."""
    if isinstance(exc, SkuvidError):
        return Classified(exc.kind, exc.reason, exc.message, dict(exc.details))
    names = {cls.__name__ for cls in type(exc).__mro__}
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, ssl.SSLError):
        return Classified(Outcome.FATAL, Reason.TLS_FAILED, text)
    if names & _FATAL_NAMES:
        return Classified(Outcome.FATAL, Reason.AUTH_FAILED, text)
    s3_code = _s3_error_code(exc)
    if s3_code in _S3_FATAL_CODES:
        return Classified(Outcome.FATAL, Reason.STORAGE_UNAVAILABLE, text)
    if s3_code in _S3_TRANSIENT_CODES:
        return Classified(Outcome.RETRY, Reason.STORAGE_UNAVAILABLE, text)
    if "OutOfMemoryError" in names:
        return Classified(Outcome.RETRY, Reason.GPU_OOM, text)
    if names & _TRANSIENT_NAMES or isinstance(exc, (ConnectionError, TimeoutError, asyncio.TimeoutError)):
        reason = Reason.BROKER_UNAVAILABLE if _is_kafka(exc) else Reason.STORAGE_UNAVAILABLE
        return Classified(Outcome.RETRY, reason, text)
    return Classified(Outcome.FAILED, Reason.INTERNAL_ERROR, text)


def _s3_error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None


def _is_kafka(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("aiokafka")
