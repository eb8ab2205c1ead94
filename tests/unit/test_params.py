"""Render parameters: presets, frame counts, seeds and the exact validation messages."""

from __future__ import annotations

import math

import pytest

from inference.params import (
    RESOLUTIONS,
    ParamsError,
    frames_for,
    make_params,
    plan_params,
    seed_from_key,
    size_for,
)
from schemas.events import Reason
from skuvid.settings import Settings

GOOD = dict(resolution="480p", aspect="16:9", duration_s=5.0, fps=24, steps=50, guidance_scale=5.0,
            flow_shift=5.0, seed=7)


@pytest.mark.parametrize(
    ("duration_s", "fps", "frames"),
    [(5.0, 24, 121), (2.0, 24, 49), (10.0, 24, 241), (2.5, 24, 61), (3.0, 16, 49), (4.0, 30, 121)],
)
def test_frames_are_4n_plus_1_nearest_to_duration(duration_s, fps, frames):
    assert frames_for(duration_s, fps) == frames
    assert frames % 4 == 1


@pytest.mark.parametrize(
    ("duration_s", "fps", "message"),
    [
        (1.9, 24, "duration_s must be between 2 and 10 seconds, got 1.9"),
        (10.5, 24, "duration_s must be between 2 and 10 seconds, got 10.5"),
        (math.nan, 24, "duration_s must be between 2 and 10 seconds, got nan"),
        (5.0, 0, "fps must be at least 1, got 0"),
        (10.0, 60, "10.0 s at 60 fps gives 601 frames; the model renders 5 to 241"),
    ],
)
def test_bad_durations_are_refused_with_exact_messages(duration_s, fps, message):
    with pytest.raises(ParamsError) as info:
        frames_for(duration_s, fps)
    assert str(info.value) == message
    assert info.value.message == message
    assert info.value.reason is Reason.INVALID_PARAMS
    assert isinstance(info.value, ValueError)


def test_presets_are_multiples_of_32_with_the_official_sizes():
    for presets in RESOLUTIONS.values():
        for aspect, (w, h) in presets.items():
            assert w % 32 == 0 and h % 32 == 0
            if aspect == "16:9":
                assert w > h
            elif aspect == "9:16":
                assert h > w
            else:
                assert w == h
    assert size_for("720p", "16:9") == (1280, 704)
    assert size_for("720p", "9:16") == (704, 1280)
    assert size_for("480p", "16:9") == (832, 480)
    assert size_for("240p", "16:9") == (416, 224)


def test_unknown_presets_are_refused_with_exact_messages():
    with pytest.raises(ParamsError, match=r"^resolution must be one of \['240p', '480p', '720p'\], got '1080p'$"):
        size_for("1080p", "16:9")
    with pytest.raises(ParamsError, match=r"^aspect must be one of \['16:9', '1:1', '9:16'\], got '4:3'$"):
        size_for("480p", "4:3")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("steps", 0, "steps must be between 1 and 100, got 0"),
        ("steps", 101, "steps must be between 1 and 100, got 101"),
        ("guidance_scale", -0.5, "guidance_scale must be between 0 and 20, got -0.5"),
        ("guidance_scale", math.inf, "guidance_scale must be between 0 and 20, got inf"),
        ("flow_shift", 0.0, "flow_shift must be above 0 and at most 20, got 0.0"),
        ("flow_shift", 25.0, "flow_shift must be above 0 and at most 20, got 25.0"),
        ("seed", -1, "seed must be in [0, 2**63), got -1"),
        ("seed", 2**63, f"seed must be in [0, 2**63), got {2**63}"),
    ],
)
def test_out_of_range_values_are_refused_with_exact_messages(field, value, message):
    with pytest.raises(ParamsError) as info:
        make_params(**(GOOD | {field: value}))
    assert str(info.value) == message


def test_make_params_fills_render_params():
    p = make_params(**GOOD)
    assert (p.width, p.height, p.num_frames, p.fps) == (832, 480, 121, 24)
    assert (p.steps, p.guidance_scale, p.flow_shift, p.seed) == (50, 5.0, 5.0, 7)


def test_seed_from_key_is_stable_distinct_and_in_range():
    a, b = seed_from_key("sku-1/daily-a"), seed_from_key("sku-1/daily-b")
    assert a == seed_from_key("sku-1/daily-a")
    assert a != b
    assert all(0 <= s < 2**63 for s in (a, b, seed_from_key(""), seed_from_key("长标题" * 100)))


def test_plan_params_from_default_settings_is_official_480p():
    p = plan_params(Settings(), key="k1")
    assert (p.width, p.height, p.num_frames, p.steps, p.guidance_scale, p.flow_shift) == (832, 480, 121, 50, 5.0, 5.0)
    assert p.seed == seed_from_key("k1")
    assert plan_params(Settings(), key="k1") == p


def test_plan_params_uses_a_given_seed_and_the_settings_presets():
    s = Settings(resolution="720p", aspect="9:16", duration_s=2.0, steps=4, guidance_scale=1.0)
    p = plan_params(s, key="k1", seed=42)
    assert (p.width, p.height, p.num_frames, p.steps, p.guidance_scale, p.seed) == (704, 1280, 49, 4, 1.0, 42)


def test_plan_params_refuses_bad_settings_that_bypassed_validation():
    bad = Settings.model_construct(**(Settings().model_dump() | {"duration_s": 12.0}))
    with pytest.raises(ParamsError, match=r"^duration_s must be between 2 and 10 seconds, got 12.0$"):
        plan_params(bad, key="k")
