"""CLIP scoring on a tiny random CLIP built from the real transformers classes, saved with save_pretrained and
loaded back with from_pretrained (the production loading path); no downloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.postprocess import synthetic_clip
from inference.clip_score import ClipError, ClipScorer, get_clip_scorer, save_tiny_clip
from inference.quality import QualityGate, QualityThresholds
from schemas.events import Reason


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def scorer(model_dir: Path) -> ClipScorer:
    return ClipScorer.load(model_dir, device="cpu")


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return synthetic_clip(17, 96, 160, seed=2)


def test_tiny_model_is_saved_as_a_loadable_folder(model_dir: Path):
    assert (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()
    assert (model_dir / "tokenizer.json").is_file()


def test_text_scores_are_cosines_of_the_sampled_frames(scorer: ClipScorer, clip: np.ndarray):
    scores = scorer.score(clip, "无线耳机 on a white table", num_frames=4)
    assert scores.frame_indices == (0, 5, 11, 16)
    assert len(scores.text_per_frame) == 4 and all(-1.0 <= s <= 1.0 for s in scores.text_per_frame)
    assert scores.text == pytest.approx(np.mean(scores.text_per_frame))
    assert scores.image is None and scores.image_per_frame is None


def test_scores_are_deterministic_and_depend_on_the_text(scorer: ClipScorer, clip: np.ndarray):
    first = scorer.score(clip, "red headphones", num_frames=3)
    again = scorer.score(clip, "red headphones", num_frames=3)
    other = scorer.score(clip, "一只绿色的花瓶", num_frames=3)
    assert first == again
    assert first.text_per_frame != other.text_per_frame


def test_product_image_identical_to_a_frame_scores_one_on_that_frame(scorer: ClipScorer, clip: np.ndarray):
    scores = scorer.score(clip, "headphones", Image.fromarray(clip[0]), num_frames=3)
    assert scores.image_per_frame[0] == pytest.approx(1.0, abs=1e-5)
    assert scores.image == pytest.approx(np.mean(scores.image_per_frame))
    assert max(scores.image_per_frame[1:]) < 1.0 - 1e-4


def test_prompt_longer_than_77_tokens_is_truncated_not_refused(scorer: ClipScorer, clip: np.ndarray):
    scores = scorer.score(clip, "超长的提示词 " * 400, num_frames=2)
    assert -1.0 <= scores.text <= 1.0


def test_missing_model_raises_a_clip_error(tmp_path: Path):
    with pytest.raises(ClipError) as info:
        ClipScorer.load(tmp_path / "absent")
    assert info.value.reason == Reason.RENDER_ERROR and "absent" in str(info.value)


def test_scorer_is_loaded_once_and_reused(model_dir: Path):
    assert get_clip_scorer(str(model_dir), "cpu") is get_clip_scorer(str(model_dir), "cpu")


def test_gate_adds_clip_scores_and_fails_below_the_threshold(scorer: ClipScorer, clip: np.ndarray):
    strict = QualityGate(QualityThresholds(clip_text_min=1.01, clip_image_min=1.01, clip_frames=3), scorer)
    result = strict.evaluate(clip, "headphones", Image.fromarray(clip[8]))
    assert {"clip_text", "clip_image"} <= set(result.failures) and not result.passed
    assert -1.0 <= result.scores["clip_text"] <= 1.0 and -1.0 <= result.scores["clip_image"] <= 1.0


def test_gate_with_clip_disabled_records_scores_without_failing(scorer: ClipScorer, clip: np.ndarray):
    lenient = QualityGate(QualityThresholds(clip_text_min=None, clip_image_min=None, clip_frames=3), scorer)
    result = lenient.evaluate(clip, "headphones", Image.fromarray(clip[8]))
    assert result.passed and result.failures == []
    assert {"clip_text", "clip_image"} <= set(result.scores)
    assert 0.0 <= result.score < 1.0  # the CLIP term orders passing attempts
    frame_only = QualityGate(QualityThresholds(), None).evaluate(clip, "headphones", None)
    assert "clip_text" not in frame_only.scores
