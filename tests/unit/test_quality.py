"""Frame checks of the quality gate: each detector fires on its synthetic defect and stays quiet on clean,
smoothly moving content (and on the look-alikes it must not confuse with the defect)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.postprocess import synthetic_clip
from inference.quality import (CheckResult, FrameError, GateResult, QualityGate, QualityThresholds, best_attempt,
                               check_finite, pick_poster_frame)
from schemas.events import QualityReport, Reason

T = QualityThresholds()
FRAME_METRICS = {"black_fraction", "blown_fraction", "motion", "flicker", "tearing", "scene_jump"}


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return synthetic_clip(33, 128, 224, seed=1)


def failures(frames: np.ndarray) -> list[str]:
    return QualityGate(T).evaluate(frames, "a product", None).failures


def brighten(frames: np.ndarray, amount: int, where: slice | int) -> np.ndarray:
    out = frames.astype(np.int16)
    out[where] += amount
    return np.clip(out, 0, 255).astype(np.uint8)


def test_clean_moving_clip_passes_every_frame_check(clip):
    result = QualityGate(T).evaluate(clip, "a product", None)
    assert result.passed and result.failures == []
    assert set(result.scores) == FRAME_METRICS
    assert "clip_text" not in result.scores  # no CLIP scorer: frame checks only


def test_black_frames_fail_and_dark_content_does_not(clip):
    black = clip.copy()
    black[:8] = 2
    assert "black" in failures(black)
    assert "black" not in failures((clip // 3).astype(np.uint8))  # dim, not black


def test_blown_out_frames_fail(clip):
    blown = clip.copy()
    blown[-8:] = 253
    assert "blown" in failures(blown)
    assert "blown" not in failures(clip)


def test_frozen_video_fails_and_slow_motion_does_not(clip):
    assert "frozen" in failures(np.repeat(clip[:1], clip.shape[0], axis=0))
    slow = synthetic_clip(33, 128, 224, seed=1, noise=0)
    assert "frozen" not in failures(slow)


def test_flicker_fails_and_a_smooth_fade_does_not(clip):
    assert "flicker" in failures(brighten(clip, 30, slice(None, None, 2)))
    assert "flicker" in failures(brighten(clip, 40, 16))  # a one-frame flash
    fade = (clip * np.linspace(1.0, 0.3, clip.shape[0])[:, None, None, None]).astype(np.uint8)
    assert "flicker" not in failures(fade)


def test_tearing_fails_and_a_static_horizontal_edge_does_not(clip):
    torn = clip.copy()
    torn[12, 44:] = np.roll(clip[12, 44:], 40, axis=1)  # lower part (across the striped card) shifted sideways
    assert "tearing" in failures(torn)
    stale = clip.copy()
    stale[20, 44:] = clip[10, 44:]  # lower part left over from an older frame
    assert "tearing" in failures(stale)
    edged = clip.copy()
    edged[:, 64:] //= 3  # a hard horizontal edge present in every frame
    assert "tearing" not in failures(edged)


def test_scene_jump_fails_and_continuous_motion_does_not(clip):
    other = synthetic_clip(33, 128, 224, seed=7)[:, ::-1, ::-1]
    cut = np.concatenate([clip[:16], np.ascontiguousarray(other[16:])])
    assert "scene_jump" in failures(cut)
    assert "scene_jump" not in failures(clip)


def test_check_finite_flags_nan_and_inf_before_conversion():
    values = np.random.default_rng(0).random((4, 16, 16, 3), dtype=np.float32)
    assert check_finite(values) == CheckResult("nonfinite", 0.0, 0.0, True)
    values[2, 3, 4, 1] = np.nan
    values[3, 0, 0, 0] = np.inf
    bad = check_finite(values)
    assert not bad.passed and bad.score == pytest.approx(2 / values.size)


def test_float_frames_add_the_finite_check_to_the_gate(clip):
    values = clip.astype(np.float32) / 255
    values[0, 0, 0, 0] = np.nan
    result = QualityGate(T).evaluate(clip, "a product", None, float_frames=values)
    assert result.failures == ["nonfinite"] and not result.passed
    assert result.scores["nonfinite_fraction"] == pytest.approx(1 / values.size)


def test_failed_checks_lower_the_score_and_best_attempt_prefers_passing(clip):
    gate = QualityGate(T)
    good = gate.evaluate(clip, "p", None)
    frozen = gate.evaluate(np.repeat(clip[:1], clip.shape[0], axis=0), "p", None)
    assert frozen.score < good.score
    assert best_attempt([frozen, good, frozen]) == 1
    assert best_attempt([good, good]) == 0  # ties keep the earlier attempt
    with pytest.raises(ValueError):
        best_attempt([])


def test_gate_result_becomes_the_quality_report():
    result = GateResult(passed=False, score=-1.2, scores={"flicker": 9.0}, failures=["flicker"])
    report = result.report(attempts=3, flagged=True)
    assert report == QualityReport(passed=False, attempts=3, scores={"flicker": 9.0}, flagged=True)
    assert result.failure_details(3) == {"failures": "flicker", "attempts": 3, "score_flicker": 9.0}


@pytest.mark.parametrize("bad", [np.zeros((4, 16, 16, 3), np.float32), np.zeros((16, 16, 3), np.uint8),
                                 np.zeros((4, 16, 16, 4), np.uint8), np.zeros((0, 16, 16, 3), np.uint8)])
def test_malformed_frames_are_refused_with_a_reason(bad):
    with pytest.raises(FrameError) as info:
        QualityGate(T).evaluate(bad, "p", None)
    assert info.value.reason == Reason.INVALID_OUTPUT


def test_poster_frame_is_the_sharpest_non_blank_frame(clip):
    frames = clip.copy()
    frames[:, :, :] = frames.mean(axis=(1, 2), keepdims=True).astype(np.uint8)  # featureless frames
    frames[5] = clip[5]  # the only frame with detail
    frames[9] = 0  # black: never the poster
    assert pick_poster_frame(frames, samples=frames.shape[0]) == 5
    blurry_black = np.zeros_like(clip)
    blurry_black[3] = clip[3]
    assert pick_poster_frame(blurry_black, samples=clip.shape[0]) == 3


def test_poster_frame_prefers_higher_clip_score_among_equally_sharp_frames(clip):
    frames = np.repeat(clip[:1], 5, axis=0)
    assert pick_poster_frame(frames, samples=5, clip_text={0: 0.1, 2: 0.9, 4: 0.3}) == 2
