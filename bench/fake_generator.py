"""``FakeGenerator``: a TEST DOUBLE for ``inference.pipeline.VideoGenerator`` in reliability and load runs.

It is not a model. It returns real frames (a smooth moving pattern, uint8 ``(F, H, W, 3)`` of the requested
size, that passes the quality gate's motion, exposure, flicker, tearing and scene-jump checks) after a fixed
wall time per clip, so a run of real renderer processes measures the service — queue, pause/resume, upload,
publish, commit, restarts — and not the CPU speed of a diffusion model. Poison inputs are opt-in:

* a prompt containing ``fail_marker`` raises a permanent ``GenerationError(render_error)`` every time;
* a prompt containing ``transient_marker`` raises a transient ``GenerationError(gpu_oom)`` every time, so
  the renderer must retry with backoff and give up after ``Settings.max_attempts``.

The renderer's composition root times pipeline stages through ``generator.t2v`` (text encoder, transformer,
VAE decode hooks), so the double carries a pipeline-shaped ``t2v`` of identity modules and calls them in
order: the stage metrics see text encoding, the denoising steps (where the fixed time is spent) and a decode.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from inference.pipeline import GenerationError
from schemas.events import Reason, RenderParams

SIZE_MULTIPLE = 32  # what VideoGenerator.size_multiple is for Wan2.2 TI2V-5B (VAE 16 x patch 2)
FRAME_MULTIPLE = 4  # VideoGenerator.frame_multiple (temporal compression)


class FakeGenerator:
    """Test double of ``VideoGenerator.generate``: fixed ``seconds`` per clip (``time.sleep``), real frames.

    Same call interface as the real generator (``generate(prompt=, negative_prompt=, params=, image=None,
    on_step=None)``) and the ``model_id`` attribute the render job checks requests against. Thread-safe;
    like the real one it renders one clip at a time (a lock), so a renderer's job time is what it says.
    """

    def __init__(self, model_id: str, *, seconds: float = 0.5, fail_marker: str | None = None,
                 transient_marker: str | None = None) -> None:
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        self.model_id = model_id
        self.seconds = seconds
        self.fail_marker = fail_marker
        self.transient_marker = transient_marker
        self.calls = 0
        self._lock = threading.Lock()
        self._patterns: dict[tuple[int, int, int], np.ndarray] = {}
        self.t2v = FakePipeline()

    def generate(self, *, prompt: str, negative_prompt: str, params: RenderParams, image: Image.Image | None = None,
                 on_step: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Frames for ``params`` (uint8 ``(num_frames, height, width, 3)``) after ``seconds`` of wall time."""
        with self._lock:
            started = time.monotonic()
            self.calls += 1
            if self.fail_marker and self.fail_marker in prompt:
                raise GenerationError(Reason.RENDER_ERROR, f"fake generator refuses prompts with {self.fail_marker!r}")
            if self.transient_marker and self.transient_marker in prompt:
                raise GenerationError(Reason.GPU_OOM, f"fake generator is out of memory for {self.transient_marker!r}")
            self._check_params(params)
            latent = self.t2v.text_encoder(torch.zeros(1))
            frames = self._pattern(params.num_frames, params.height, params.width, params.seed)
            for step in range(params.steps):  # the fixed time is spent "denoising", spread over the steps
                time.sleep(max(0.0, (self.seconds - (time.monotonic() - started)) / (params.steps - step)))
                latent = self.t2v.transformer(latent)
                if on_step is not None:
                    on_step(step + 1, params.steps)
            self.t2v.vae.decode(latent)
            return frames

    @staticmethod
    def _check_params(params: RenderParams) -> None:
        """The real generator's shape checks (Wan2.2: sizes multiple of 32, 4n+1 frames), same errors."""
        if params.width % SIZE_MULTIPLE or params.height % SIZE_MULTIPLE:
            raise GenerationError(Reason.INVALID_PARAMS, f"width and height must be multiples of {SIZE_MULTIPLE}, "
                                                         f"got {params.width}x{params.height}")
        if params.num_frames % FRAME_MULTIPLE != 1:
            raise GenerationError(Reason.INVALID_PARAMS, f"num_frames must be {FRAME_MULTIPLE}n+1, got {params.num_frames}")

    def _pattern(self, num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
        """A drifting diagonal gradient with a moving disc: smooth, moving, never black or blown out.
        Cached per shape (the copy handed out is the caller's); the seed shifts the phase."""
        key = (num_frames, height, width)
        if key not in self._patterns:
            t = np.arange(num_frames, dtype=np.float32)[:, None, None]
            ys = np.arange(height, dtype=np.float32)[None, :, None]
            xs = np.arange(width, dtype=np.float32)[None, None, :]
            luma = 110 + 45 * np.sin((xs + 2.5 * t) / 23.0) + 30 * np.cos((ys - 1.5 * t) / 19.0)
            cx, cy = width * (0.2 + 0.6 * t / max(1, num_frames - 1)), height / 2
            disc = (xs - cx) ** 2 + (ys - cy) ** 2 < (0.15 * height) ** 2
            rgb = np.stack([luma + 20 * disc, luma - 10 * disc, luma * 0.9 + 40 * disc], axis=-1)
            self._patterns[key] = np.clip(rgb, 0, 255).astype(np.uint8)
        return np.roll(self._patterns[key], seed % max(1, width), axis=2)


class _FakeVae(torch.nn.Module):
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents


class FakePipeline:
    """The parts of a diffusers video pipeline that stage timing hooks into; identity modules, no weights."""

    def __init__(self) -> None:
        self.text_encoder = torch.nn.Identity()
        self.transformer = torch.nn.Identity()
        self.transformer_2 = None
        self.vae = _FakeVae()
