"""One failure taxonomy: what an error means decides its outcome, wherever it was raised."""

from __future__ import annotations

import pickle
import ssl

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, SaslAuthenticationFailed
from botocore.exceptions import ClientError, EndpointConnectionError

from consumers.outcomes import failed_event
from inference.image_fetch import ImageFetchError
from inference.params import ParamsError
from inference.pipeline import GenerationError
from inference.prompt import ContentRefused
from schemas.codec import DecodeError, encode_value
from schemas.events import MAX_DETAIL_CHARS, MAX_MESSAGE_CHARS, Reason
from skuvid.errors import FatalError, Outcome, SkuvidError, TransientError, classify


def s3_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "PutObject")


@pytest.mark.parametrize(
    ("exc", "outcome", "reason"),
    [
        (DecodeError(Reason.INVALID_JSON, "not JSON"), Outcome.DEAD_LETTER, Reason.INVALID_JSON),
        (ContentRefused(Reason.UNSAFE_CONTENT, "weapons:枪", "unsafe"), Outcome.FAILED, Reason.UNSAFE_CONTENT),
        (ParamsError("steps must be 1..100"), Outcome.FAILED, Reason.INVALID_PARAMS),
        (ImageFetchError("http://x/a.png", "timed out", transient=True), Outcome.RETRY, Reason.IMAGE_FETCH_FAILED),
        (ImageFetchError("http://x/a.png", "not a decodable image"), Outcome.FAILED, Reason.IMAGE_FETCH_FAILED),
        (GenerationError(Reason.GPU_OOM, "out of memory"), Outcome.RETRY, Reason.GPU_OOM),
        (GenerationError(Reason.INVALID_OUTPUT, "NaN"), Outcome.FAILED, Reason.INVALID_OUTPUT),
        (EndpointConnectionError(endpoint_url="http://s3"), Outcome.RETRY, Reason.STORAGE_UNAVAILABLE),
        (s3_error("SlowDown"), Outcome.RETRY, Reason.STORAGE_UNAVAILABLE),
        (s3_error("InvalidAccessKeyId"), Outcome.FATAL, Reason.STORAGE_UNAVAILABLE),
        (KafkaConnectionError("no broker"), Outcome.RETRY, Reason.BROKER_UNAVAILABLE),
        (KafkaTimeoutError(), Outcome.RETRY, Reason.BROKER_UNAVAILABLE),
        (SaslAuthenticationFailed("bad password"), Outcome.FATAL, Reason.AUTH_FAILED),
        (ssl.SSLCertVerificationError("unknown CA"), Outcome.FATAL, Reason.TLS_FAILED),
        (TimeoutError(), Outcome.RETRY, Reason.STORAGE_UNAVAILABLE),
        (FatalError("no font", reason=Reason.RENDER_ERROR), Outcome.FATAL, Reason.RENDER_ERROR),
        (TransientError("later", reason=Reason.STORAGE_UNAVAILABLE), Outcome.RETRY, Reason.STORAGE_UNAVAILABLE),
        (KeyError("a bug"), Outcome.FAILED, Reason.INTERNAL_ERROR),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_classify_by_meaning(exc, outcome, reason):
    classified = classify(exc)
    assert (classified.outcome, classified.reason) == (outcome, reason)
    assert classified.message


def test_errors_survive_pickling_with_their_kind():
    for exc in (ImageFetchError("u", "timed out", transient=True), ContentRefused(Reason.EMPTY_CONTENT, "empty", "m"),
                DecodeError(Reason.SCHEMA_VIOLATION, "x")):
        again = pickle.loads(pickle.dumps(exc))
        assert (type(again), again.reason, again.kind, again.message) == (type(exc), exc.reason, exc.kind, exc.message)


def test_failed_event_is_bounded_whatever_the_error_carries():
    huge = "http://evil/" + "%41" * 2_000_000
    event = failed_event(SkuvidError(f"cannot fetch {huge}", reason=Reason.IMAGE_FETCH_FAILED,
                                     details={"image_url": huge, **{f"k{i}": i for i in range(100)}}),
                         sku="SKU-1", source_event_id="evt-1", attempts=3)
    assert event.truncated and event.attempts == 3
    assert len(event.message) <= MAX_MESSAGE_CHARS and len(event.details["image_url"]) <= MAX_DETAIL_CHARS
    assert len(encode_value(event)) < 16_384


def test_failed_event_ids_are_stable_for_a_redelivered_failure():
    first = failed_event(ParamsError("bad"), sku="S", source_event_id="e", request_key="a" * 64)
    again = failed_event(ParamsError("bad"), sku="S", source_event_id="e", request_key="a" * 64)
    assert first.event_id == again.event_id and not first.truncated
