"""Render parameters: validated once, up front, into a ``RenderParams`` that enters the request key.

Every value that changes the pixels (size, frame count, steps, guidance, flow shift, seed) is decided here,
before any GPU time is spent, so a bad setting fails with ``ParamsError`` (reason ``invalid_params``) and a
message naming the bad value, and equal inputs always give equal parameters (and so equal request keys).
"""

from __future__ import annotations

import hashlib
import math
from typing import Final

from schemas.events import Reason, RenderParams
from skuvid.errors import SkuvidError
from skuvid.settings import Settings

#: (width, height) per resolution preset and aspect. All are multiples of 32, which Wan2.2 TI2V-5B needs
#: (VAE 16x spatial compression x 2x2 patches). 720p 16:9 / 9:16 are the official 1280x704 / 704x1280;
#: 480p is 832x480; 1:1 keeps about the same pixel count as the 16:9 size; 240p is a CPU preview size.
RESOLUTIONS: Final[dict[str, dict[str, tuple[int, int]]]] = {
    "240p": {"16:9": (416, 224), "9:16": (224, 416), "1:1": (320, 320)},
    "480p": {"16:9": (832, 480), "9:16": (480, 832), "1:1": (640, 640)},
    "720p": {"16:9": (1280, 704), "9:16": (704, 1280), "1:1": (960, 960)},
}
MIN_DURATION_S: Final = 2.0
MAX_DURATION_S: Final = 10.0
MIN_FRAMES: Final = 5
MAX_FRAMES: Final = 241
MAX_STEPS: Final = 100
MAX_GUIDANCE: Final = 20.0
MAX_FLOW_SHIFT: Final = 20.0
SEED_LIMIT: Final = 2**63


class ParamsError(SkuvidError, ValueError):
    """A render parameter is out of range; ``message`` names the parameter and the bad value."""

    reason = Reason.INVALID_PARAMS


def frames_for(duration_s: float, fps: int) -> int:
    """Frame count for a clip of ``duration_s`` seconds at ``fps``: the nearest 4n+1 to ``duration_s*fps + 1``.

    Wan's VAE compresses time 4x with a causal first frame, so frame counts are 4n+1 (5 s at 24 fps -> 121).
    Raises ``ParamsError`` for a duration outside 2-10 s, a non-positive fps, or a count outside 5-241.
    """
    if not math.isfinite(duration_s) or not MIN_DURATION_S <= duration_s <= MAX_DURATION_S:
        raise ParamsError(f"duration_s must be between 2 and 10 seconds, got {duration_s!r}")
    if fps < 1:
        raise ParamsError(f"fps must be at least 1, got {fps!r}")
    frames = round(duration_s * fps / 4) * 4 + 1
    if not MIN_FRAMES <= frames <= MAX_FRAMES:
        raise ParamsError(
            f"{duration_s!r} s at {fps} fps gives {frames} frames; the model renders {MIN_FRAMES} to {MAX_FRAMES}"
        )
    return frames


def size_for(resolution: str, aspect: str) -> tuple[int, int]:
    """(width, height) in pixels of a resolution preset ('240p', '480p', '720p') and aspect ('16:9', '9:16', '1:1')."""
    presets = RESOLUTIONS.get(resolution)
    if presets is None:
        raise ParamsError(f"resolution must be one of {sorted(RESOLUTIONS)}, got {resolution!r}")
    size = presets.get(aspect)
    if size is None:
        raise ParamsError(f"aspect must be one of {sorted(presets)}, got {aspect!r}")
    return size


def seed_from_key(key: str) -> int:
    """A seed in [0, 2**63) derived from ``key`` (SHA-256): the same request always gets the same seed."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def make_params(
    *,
    resolution: str,
    aspect: str,
    duration_s: float,
    fps: int,
    steps: int,
    guidance_scale: float,
    flow_shift: float,
    seed: int,
) -> RenderParams:
    """Validate plain values into ``RenderParams``; raises ``ParamsError`` naming the first bad value."""
    width, height = size_for(resolution, aspect)
    num_frames = frames_for(duration_s, fps)
    if not 1 <= steps <= MAX_STEPS:
        raise ParamsError(f"steps must be between 1 and {MAX_STEPS}, got {steps!r}")
    if not math.isfinite(guidance_scale) or not 0.0 <= guidance_scale <= MAX_GUIDANCE:
        raise ParamsError(f"guidance_scale must be between 0 and {MAX_GUIDANCE:g}, got {guidance_scale!r}")
    if not math.isfinite(flow_shift) or not 0.0 < flow_shift <= MAX_FLOW_SHIFT:
        raise ParamsError(f"flow_shift must be above 0 and at most {MAX_FLOW_SHIFT:g}, got {flow_shift!r}")
    if not 0 <= seed < SEED_LIMIT:
        raise ParamsError(f"seed must be in [0, 2**63), got {seed!r}")
    return RenderParams(
        width=width, height=height, num_frames=num_frames, fps=fps, steps=steps,
        guidance_scale=guidance_scale, flow_shift=flow_shift, seed=seed,
    )


def plan_params(settings: Settings, *, key: str, seed: int | None = None) -> RenderParams:
    """The render parameters for one request from the settings; the seed comes from ``key`` unless given.

    ``key`` is anything stable that identifies the request content (e.g. prompt hash + variant id), so a
    redelivered or re-planned request renders the same video.
    """
    return make_params(
        resolution=settings.resolution,
        aspect=settings.aspect,
        duration_s=settings.duration_s,
        fps=settings.fps,
        steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        flow_shift=settings.flow_shift,
        seed=seed_from_key(key) if seed is None else seed,
    )
