"""The reliability suite's test doubles and inputs, without a broker: the fake generator and the hostile records."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bench.fake_generator import FakeGenerator
from inference.pipeline import GenerationError
from inference.quality import QualityGate
from schemas.codec import decode
from schemas.events import Reason, RenderParams
from skuvid.settings import Settings
from tests.reliability.hostile_inputs import PRODUCT_KINDS, REQUEST_KINDS, generate, ssrf_urls

PARAMS = RenderParams(width=416, height=224, num_frames=49, fps=24, steps=2, guidance_scale=1.0, flow_shift=5.0,
                      seed=3)


def test_fake_generator_takes_its_fixed_time_and_returns_frames_the_real_gate_passes() -> None:
    generator = FakeGenerator("fake-generator", seconds=0.2)
    generator.generate(prompt="warm-up", negative_prompt="", params=PARAMS)  # the pattern is built once per shape
    steps: list[tuple[int, int]] = []
    started = time.monotonic()
    frames = generator.generate(prompt="a mug", negative_prompt="", params=PARAMS, on_step=lambda n, t: steps.append((n, t)))
    assert 0.2 <= time.monotonic() - started < 0.5
    assert frames.shape == (49, 224, 416, 3) and frames.dtype == np.uint8
    assert steps == [(1, 2), (2, 2)]
    gate = QualityGate.from_settings(Settings(clip_model=None, quality_clip_text_min=None,
                                              quality_clip_image_min=None))
    assert gate.evaluate(frames, "a mug").passed


def test_fake_generator_poison_markers_fail_permanently_or_transiently() -> None:
    generator = FakeGenerator("fake-generator", seconds=0.0, fail_marker="BAD", transient_marker="FLAKY")
    with pytest.raises(GenerationError) as permanent:
        generator.generate(prompt="x BAD", negative_prompt="", params=PARAMS)
    with pytest.raises(GenerationError) as transient:
        generator.generate(prompt="x FLAKY", negative_prompt="", params=PARAMS)
    assert permanent.value.reason is Reason.RENDER_ERROR and not permanent.value.retryable
    assert transient.value.reason is Reason.GPU_OOM and transient.value.retryable
    with pytest.raises(GenerationError) as shape:
        generator.generate(prompt="x", negative_prompt="", params=PARAMS.model_copy(update={"num_frames": 50}))
    assert shape.value.reason is Reason.INVALID_PARAMS


def test_hostile_records_are_seeded_and_cover_every_kind_and_the_ssrf_forms() -> None:
    from tests.reliability.accounting import catalog_products, plan_requests

    settings = Settings(model="fake-generator", resolution="240p", duration_s=2.0, steps=1)
    template = plan_requests(settings, catalog_products(1, "T", images=False))[0]
    first = generate(600, seed=5, canary_port=9, request=template)
    assert first == generate(600, seed=5, canary_port=9, request=template)
    assert {r.kind for r in first} >= set(PRODUCT_KINDS) | set(REQUEST_KINDS) - {"huge_string"}
    urls = " ".join(ssrf_urls(9))
    for form in ("2002:7f00:1::1", "64:ff9b::7f00:1", "2001:0:4136:e378:8000:63bf:80ff:fffe", "::ffff:127.0.0.1",
                 "::127.0.0.1", "2130706433", "0177.0.0.1", "0x7f000001"):
        assert form in urls
    for record in first:  # a record that decodes can be traced back to its outcome
        try:
            decode(record.topic, record.value)
        except Exception:  # noqa: BLE001 - most are meant not to decode
            continue
        assert record.event_id or record.request_key
