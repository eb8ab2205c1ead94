"""Quality gate: model-free frame checks plus optional CLIP text/image consistency, one verdict per attempt.

Frame checks run on a strided luma stack (every ``stride``-th row and column, BT.601 luma, 0..255), so a
121-frame 480p clip costs a few tens of milliseconds. Each check returns a score and a verdict against a
threshold from Settings; the gate folds them into a GateResult whose ``score`` orders attempts:
each failed check costs 1, and the CLIP similarity (when used) adds a term in [0, 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from schemas.events import QualityReport, Reason
from skuvid.errors import SkuvidError
from skuvid.settings import Settings

if TYPE_CHECKING:
    from PIL.Image import Image

    from inference.clip_score import ClipScorer

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_GRID = 4  # flicker is measured on a 4x4 grid of blocks
# Key in GateResult.scores of each check whose score is not named like the check (the rest use the check name).
METRIC_OF_CHECK = {"nonfinite": "nonfinite_fraction", "black": "black_fraction", "blown": "blown_fraction",
                   "frozen": "motion"}


class FrameError(SkuvidError, ValueError):
    """Frames are not a uint8 (F, H, W, 3) RGB stack: the generator's output is unusable."""

    reason = Reason.INVALID_OUTPUT


@dataclass(frozen=True)
class CheckResult:
    """One check: its ``score`` (unit in the check's docstring), the ``threshold`` and the verdict."""

    name: str
    score: float
    threshold: float
    passed: bool


@dataclass(frozen=True)
class GateResult:
    """Outcome of one attempt.

    ``score`` orders attempts (higher is better; ties keep the earlier one), ``scores`` maps every measure
    to its value (black_fraction, blown_fraction, motion, flicker, tearing, scene_jump, and when measured
    nonfinite_fraction, clip_text, clip_image), ``failures`` names the failed checks (nonfinite, black,
    blown, frozen, flicker, tearing, scene_jump, clip_text, clip_image), ``best_frame`` is the poster
    candidate (sharpest non-blank sampled frame, weighted by its CLIP text score when CLIP ran).
    """

    passed: bool
    score: float
    scores: dict[str, float]
    failures: list[str]
    best_frame: int = 0

    def report(self, attempts: int, *, flagged: bool = False) -> QualityReport:
        """The QualityReport for video.ready when this attempt is the one published."""
        return QualityReport(passed=self.passed, attempts=attempts, scores=self.scores, flagged=flagged)

    def failure_details(self, attempts: int) -> dict[str, str | float | int]:
        """``video.failed`` details (reason quality_gate) when no attempt passed: failed checks, attempts, scores."""
        return {"failures": ",".join(self.failures), "attempts": attempts,
                **{f"score_{name}": value for name, value in self.scores.items()}}


def _default(name: str):
    """The Settings default of ``quality_<name>``: one source for the thresholds' defaults."""
    return Settings.model_fields[f"quality_{name}"].default


@dataclass(frozen=True)
class QualityThresholds:
    """Limits of every check (Settings "Quality gate" section). A CLIP limit of None disables that check.

    Luma values are on the 0..255 scale; fractions are of frames; ``clip_*_min`` are cosine similarities.
    """

    black_luma_max: float = _default("black_luma_max")
    blown_luma_min: float = _default("blown_luma_min")
    exposure_max_fraction: float = _default("exposure_max_fraction")
    motion_min: float = _default("motion_min")
    flicker_max: float = _default("flicker_max")
    tearing_max: float = _default("tearing_max")
    scene_jump_max: float = _default("scene_jump_max")
    clip_text_min: float | None = _default("clip_text_min")
    clip_image_min: float | None = _default("clip_image_min")
    clip_frames: int = _default("clip_frames")
    stride: int = 4

    @classmethod
    def from_settings(cls, settings: Settings) -> QualityThresholds:
        return cls(
            black_luma_max=settings.quality_black_luma_max, blown_luma_min=settings.quality_blown_luma_min,
            exposure_max_fraction=settings.quality_exposure_max_fraction,
            motion_min=settings.quality_motion_min, flicker_max=settings.quality_flicker_max,
            tearing_max=settings.quality_tearing_max, scene_jump_max=settings.quality_scene_jump_max,
            clip_text_min=settings.quality_clip_text_min, clip_image_min=settings.quality_clip_image_min,
            clip_frames=settings.quality_clip_frames,
        )


def require_frames(frames: np.ndarray, *, min_frames: int = 1) -> None:
    """Raise FrameError unless ``frames`` is a uint8 (F >= min_frames, H, W, 3) array."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise FrameError(f"frames must be uint8 (F, H, W, 3), got {getattr(frames, 'dtype', type(frames))} "
                         f"{getattr(frames, 'shape', None)}")
    if frames.shape[0] < min_frames or frames.shape[1] < 8 or frames.shape[2] < 8:
        raise FrameError(f"frames need F >= {min_frames} and H, W >= 8, got {frames.shape}")


def luma_stack(frames: np.ndarray, stride: int = 4) -> np.ndarray:
    """BT.601 luma (0..255) float32 of every ``stride``-th row and column: shape (F, H/stride, W/stride)."""
    return frames[:, ::stride, ::stride] @ _LUMA


def check_finite(float_frames: np.ndarray) -> CheckResult:
    """Fraction of NaN/inf values in the generator's float output, checked before uint8 conversion.

    Any non-finite value fails: converting NaN to uint8 yields arbitrary pixels, not a visible error.
    """
    bad = sum(int(np.count_nonzero(~np.isfinite(frame))) for frame in float_frames)
    total = max(1, int(np.size(float_frames)))
    return CheckResult("nonfinite", bad / total, 0.0, bad == 0)


def check_exposure(luma: np.ndarray, t: QualityThresholds) -> tuple[CheckResult, CheckResult]:
    """Black and blown-out frames: fraction of frames whose mean luma is below/above the limits."""
    means = luma.mean(axis=(1, 2))
    black = float(np.mean(means < t.black_luma_max))
    blown = float(np.mean(means > t.blown_luma_min))
    return (CheckResult("black", black, t.exposure_max_fraction, black <= t.exposure_max_fraction),
            CheckResult("blown", blown, t.exposure_max_fraction, blown <= t.exposure_max_fraction))


def frame_differences(luma: np.ndarray) -> np.ndarray:
    """Mean absolute luma difference between consecutive frames, shape (F-1,)."""
    return np.abs(np.diff(luma, axis=0)).mean(axis=(1, 2))


def check_frozen(diffs: np.ndarray, t: QualityThresholds) -> CheckResult:
    """Frozen video: the median consecutive-frame luma difference (motion) is below ``motion_min``."""
    motion = float(np.median(diffs)) if diffs.size else 0.0
    return CheckResult("frozen", motion, t.motion_min, motion >= t.motion_min)


def check_flicker(luma: np.ndarray, t: QualityThresholds) -> CheckResult:
    """Brightness that jumps and comes straight back, in most of the picture.

    Per block of a 4x4 grid: the largest spike min(|d_t|, |d_t+1|) over consecutive brightness steps of
    opposite sign (a one-frame flash or an oscillation); score = median over blocks (luma levels), so a
    bright object crossing one block does not count. Smooth fades and single cuts have no reversals.
    """
    frames, height, width = luma.shape
    if frames < 3:
        return CheckResult("flicker", 0.0, t.flicker_max, True)
    bh, bw = height // _GRID, width // _GRID
    blocks = luma[:, :bh * _GRID, :bw * _GRID].reshape(frames, _GRID, bh, _GRID, bw).mean(axis=(2, 4))
    steps = np.diff(blocks.reshape(frames, -1), axis=0)
    reversal = np.sign(steps[:-1]) * np.sign(steps[1:]) < 0
    spikes = np.where(reversal, np.minimum(np.abs(steps[:-1]), np.abs(steps[1:])), 0.0)
    score = float(np.median(spikes.max(axis=0)))
    return CheckResult("flicker", score, t.flicker_max, score <= t.flicker_max)


def check_tearing(luma: np.ndarray, t: QualityThresholds) -> CheckResult:
    """A horizontal seam present in one frame only (torn or half-updated frame).

    Row discontinuity r[t, y] = mean |L[y+1] - L[y]| over the row. A natural edge also shows in the
    previous or next frame within one row, so the excess over that neighbourhood's maximum, relative to it
    (plus 2 levels for flat content), is ~0 for real edges and large for a seam. Score = the largest one.
    """
    frames = luma.shape[0]
    if frames < 2:
        return CheckResult("tearing", 0.0, t.tearing_max, True)
    rows = np.abs(np.diff(luma, axis=1)).mean(axis=2)
    spread = np.maximum(np.maximum(rows, np.roll(rows, 1, axis=1)), np.roll(rows, -1, axis=1))
    spread[:, 0] = np.maximum(rows[:, 0], rows[:, 1])
    spread[:, -1] = np.maximum(rows[:, -1], rows[:, -2])
    before = np.concatenate([spread[1:2], spread[:-1]])
    after = np.concatenate([spread[1:], spread[-2:-1]])
    neighbours = np.maximum(before, after)
    excess = (rows - neighbours) / (neighbours + 2.0)
    score = float(excess.max())
    return CheckResult("tearing", score, t.tearing_max, score <= t.tearing_max)


def check_scene_jump(diffs: np.ndarray, t: QualityThresholds) -> CheckResult:
    """An abrupt cut: the largest consecutive-frame difference relative to the clip's median (+1 level)."""
    if diffs.size < 2:
        return CheckResult("scene_jump", 0.0, t.scene_jump_max, True)
    score = float(diffs.max() / (np.median(diffs) + 1.0))
    return CheckResult("scene_jump", score, t.scene_jump_max, score <= t.scene_jump_max)


def frame_checks(frames: np.ndarray, t: QualityThresholds) -> list[CheckResult]:
    """Every model-free check on uint8 frames."""
    luma = luma_stack(frames, t.stride)
    diffs = frame_differences(luma)
    return [*check_exposure(luma, t), check_frozen(diffs, t), check_flicker(luma, t),
            check_tearing(luma, t), check_scene_jump(diffs, t)]


def sample_indices(num_frames: int, count: int) -> np.ndarray:
    """``count`` frame indices spread evenly from the first to the last frame (unique, ascending)."""
    return np.unique(np.linspace(0, num_frames - 1, max(1, min(count, num_frames))).round().astype(int))


def sharpness(frames: np.ndarray, indices: Sequence[int]) -> np.ndarray:
    """Variance of the 4-neighbour Laplacian of luma (every 2nd pixel) for the given frames."""
    luma = frames[np.asarray(indices), ::2, ::2] @ _LUMA
    lap = (4 * luma[:, 1:-1, 1:-1] - luma[:, :-2, 1:-1] - luma[:, 2:, 1:-1]
           - luma[:, 1:-1, :-2] - luma[:, 1:-1, 2:])
    return lap.var(axis=(1, 2))


def pick_poster_frame(frames: np.ndarray, t: QualityThresholds = QualityThresholds(), *, samples: int = 16,
                      clip_text: dict[int, float] | None = None) -> int:
    """Index of the best poster frame among ``samples`` evenly spread frames.

    Blank frames (black, blown, or nearly uniform) are skipped unless all are blank. Rank = sharpness
    normalised to the sharpest candidate, plus the CLIP text score normalised over the candidates.
    """
    indices = sample_indices(frames.shape[0], samples)
    luma = frames[indices, ::4, ::4] @ _LUMA
    means, spread = luma.mean(axis=(1, 2)), luma.std(axis=(1, 2))
    usable = (means >= t.black_luma_max) & (means <= t.blown_luma_min) & (spread >= 4.0)
    if not usable.any():
        usable[:] = True
    rank = sharpness(frames, indices)
    rank = rank / max(float(rank.max()), 1e-6)
    if clip_text:
        clip = np.array([clip_text.get(int(i), np.nan) for i in indices])
        if np.isfinite(clip).any():
            low, high = np.nanmin(clip), np.nanmax(clip)
            rank = rank + np.nan_to_num((clip - low) / max(high - low, 1e-6), nan=0.0)
    rank = np.where(usable, rank, -np.inf)
    return int(indices[int(np.argmax(rank))])


class QualityGate:
    """Decides whether one generated attempt may be published, and how it ranks against other attempts.

    Holds the (loaded-once) CLIP scorer; ``clip`` None runs the frame checks only.
    """

    def __init__(self, thresholds: QualityThresholds, clip: ClipScorer | None = None) -> None:
        self.thresholds = thresholds
        self.clip = clip

    @classmethod
    def from_settings(cls, settings: Settings, clip: ClipScorer | None = None) -> QualityGate:
        return cls(QualityThresholds.from_settings(settings), clip)

    def evaluate(self, frames: np.ndarray, prompt_text: str, product_image: Image | None = None, *,
                 float_frames: np.ndarray | None = None) -> GateResult:
        """Run every check on uint8 ``frames``; ``float_frames`` (pre-conversion output) adds the NaN check.

        Raises FrameError for a malformed frame stack.
        """
        require_frames(frames)
        t = self.thresholds
        checks = frame_checks(frames, t)
        if float_frames is not None:
            checks.insert(0, check_finite(float_frames))
        scores = {METRIC_OF_CHECK.get(c.name, c.name): c.score for c in checks}
        similarity: list[float] = []
        per_frame: dict[int, float] | None = None
        if self.clip is not None:
            clip = self.clip.score(frames, prompt_text, product_image, num_frames=t.clip_frames)
            per_frame = dict(zip(clip.frame_indices, clip.text_per_frame, strict=True))
            scores["clip_text"] = clip.text
            similarity.append(clip.text)
            checks.append(_at_least("clip_text", clip.text, t.clip_text_min))
            if clip.image is not None:
                scores["clip_image"] = clip.image
                similarity.append(clip.image)
                checks.append(_at_least("clip_image", clip.image, t.clip_image_min))
        failures = [c.name for c in checks if not c.passed]
        quality = (1.0 + float(np.mean(similarity))) / 2.0 * 0.999 if similarity else 0.0
        best = pick_poster_frame(frames, t, clip_text=per_frame)
        return GateResult(not failures, quality - len(failures), scores, failures, best)


def best_attempt(results: Sequence[GateResult]) -> int:
    """Index of the attempt to keep: highest score, the earliest on ties. Raises ValueError when empty."""
    if not results:
        raise ValueError("best_attempt needs at least one GateResult")
    return max(range(len(results)), key=lambda i: (results[i].score, -i))


def _at_least(name: str, value: float, minimum: float | None) -> CheckResult:
    """A CLIP check; a ``minimum`` of None records the score but never fails (CLIP disabled by policy)."""
    if minimum is None:
        return CheckResult(name, value, float("-inf"), True)
    return CheckResult(name, value, minimum, value >= minimum)
