"""One render request -> labelled files on disk: fetch image, generate, quality gate (retry), label, encode.

The job is a sequence of stages (``render_staged``): generation runs on the executor the caller gives for the
GPU, the image fetch, quality gate and encoding on the one for the CPU, so the renderer can overlap one job's
post-processing with the next job's generation; ``render`` runs them all in the calling thread (the CLI).
Every failure that the request itself causes raises ``RenderError`` with a ``Reason``; anything else is a bug
or an infrastructure fault and propagates.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from inference.c2pa_sign import ContentCredentials
from inference.fonts import find_cjk_font
from inference.image_fetch import fetch_image_for
from inference.labels import AigcLabel, mark_text_for
from inference.pipeline import VideoGenerator
from inference.postprocess import Renditions, finish_video
from inference.quality import GateResult, QualityGate
from schemas.events import QualityReport, Reason, VideoRequested
from skuvid.errors import SkuvidError
from skuvid.settings import Settings

log = logging.getLogger(__name__)

Progress = Callable[[str, int | None, int | None], None]  # (stage, step, steps): step/steps None outside denoising
Stage = Callable[..., Awaitable[Any]]  # await stage(fn, *args) -> fn(*args), run on some executor


async def inline(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a stage in the caller's thread (no pool)."""
    return fn(*args)


def _silent(stage: str, step: int | None, total: int | None) -> None:
    return None


class RenderError(SkuvidError):
    """The request cannot become a video; ``reason`` is published in ``video.failed``."""

    def __init__(self, reason: Reason, message: str, details: dict | None = None) -> None:
        super().__init__(message, reason=reason, details=details)


@dataclass(frozen=True)
class RenderedVideo:
    renditions: Renditions
    quality: QualityReport
    seed: int


@dataclass(frozen=True)
class _Attempt:
    frames: np.ndarray
    gate: GateResult
    seed: int


class RenderJob:
    """Holds the loaded model and gate (loaded once per worker) and renders requests one at a time."""

    def __init__(self, settings: Settings, generator: VideoGenerator, gate: QualityGate) -> None:
        self.settings = settings
        self.generator = generator
        self.gate = gate
        self.font_path = find_cjk_font(settings.font_path)  # fail at start-up, not on the first job
        self.credentials = ContentCredentials.from_settings(settings)  # None: no signing key configured

    def render(self, request: VideoRequested, out_dir: Path, *, image: Image.Image | None = None,
               progress: Progress | None = None) -> RenderedVideo:
        """The whole job in this thread (``skuvid render``, tests). ``image``: the product photo when the
        caller fetched it already (else it is fetched here). ``progress(stage, step, total)`` hears of each
        stage and denoising step."""
        return asyncio.run(self.render_staged(request, out_dir, image=image, progress=progress))

    async def render_staged(self, request: VideoRequested, out_dir: Path, *, image: Image.Image | None = None,
                            progress: Progress | None = None, gpu: Stage = inline, cpu: Stage = inline
                            ) -> RenderedVideo:
        """The job as stages on the given executors: ``gpu`` runs each generation, ``cpu`` the image fetch,
        the quality gate and the labelling/encoding. The renderer gives each its own pool, so one job's
        post-processing overlaps the next job's generation; ``inline`` runs a stage in the caller."""
        report = progress or _silent
        self._check_model(request)
        if image is None and request.image_url:
            report("fetching image", None, None)
            image = await cpu(self._product_image, request)
        best: _Attempt | None = None
        attempts = 0
        for attempt in range(self.settings.quality_max_attempts):
            frames, seed = await gpu(self._generate, request, image, attempt, report)
            report("quality gate", None, None)
            gate = await cpu(self.gate.evaluate, frames, request.prompt.positive, image)
            attempts = attempt + 1
            log.info("%s attempt %d seed %d: %s %s", request.sku, attempts, seed, gate.passed, gate.failures)
            if best is None or gate.score > best.gate.score:
                best = _Attempt(frames, gate, seed)
            if gate.passed:
                break
        assert best is not None
        report("labelling and encoding", None, None)
        return await cpu(self._finish, request, best, attempts, out_dir)

    def _generate(self, request: VideoRequested, image: Image.Image | None, attempt: int,
                  report: Progress) -> tuple[np.ndarray, int]:
        """One generation attempt (a new seed per attempt): the frames and the seed."""
        seed = (request.params.seed + attempt) % 2**63
        params = request.params.model_copy(update={"seed": seed})
        stage = f"generating (attempt {attempt + 1})"
        report(stage, 0, params.steps)
        on_step = None if report is _silent else (lambda n, total: report(stage, n, total))
        frames = self.generator.generate(
            prompt=request.prompt.positive, negative_prompt=request.prompt.negative, params=params, image=image,
            on_step=on_step,
        )
        return frames, seed

    def _finish(self, request: VideoRequested, best: _Attempt, attempts: int, out_dir: Path) -> RenderedVideo:
        """The gate's verdict on the best attempt, then mark, metadata, overlays and H.264 renditions."""
        passed = best.gate.passed
        if not passed and not self.settings.quality_publish_best_below_gate:
            raise RenderError(
                Reason.QUALITY_GATE,
                f"no attempt passed the quality gate in {self.settings.quality_max_attempts}: {best.gate.failures}",
                best.gate.failure_details(attempts),
            )
        renditions = finish_video(
            best.frames,
            out_dir=out_dir,
            basename=f"{request.sku}-{request.request_key[:16]}",
            mark_text=mark_text_for(request.prompt.language),
            corner=self.settings.mark_corner,
            font_path=self.font_path,
            captions=list(request.prompt.overlays),
            aigc=self._aigc_label(request),
            fps=request.params.fps,
            crf=self.settings.x264_crf,
            preset=self.settings.x264_preset,
            maxrate_kbps=self.settings.x264_maxrate_kbps,
            bufsize_kbps=self.settings.x264_bufsize_kbps,
            jpeg_quality=self.settings.poster_jpeg_quality,
            mark_height_fraction=self.settings.mark_height_fraction,
            mark_opacity=self.settings.mark_opacity,
            feed_crop=self.settings.feed_crop,
            poster_frame=best.gate.best_frame,
        )
        if self.credentials is not None:  # C2PA manifest into every MP4, after the AIGC metadata was written
            renditions = self.credentials.sign_renditions(renditions, request)
        quality = best.gate.report(attempts, flagged=not passed)
        return RenderedVideo(renditions=renditions, quality=quality, seed=best.seed)

    def _check_model(self, request: VideoRequested) -> None:
        if request.model != self.generator.model_id:
            raise RenderError(
                Reason.INVALID_PARAMS,
                f"request wants model {request.model!r} but this worker serves {self.generator.model_id!r}",
            )

    def _product_image(self, request: VideoRequested) -> Image.Image | None:
        if not request.image_url:
            return None
        # Unfitted: the generator fits it to the frame with the configured pad/crop policy. ImageFetchError
        # says itself whether a later try may succeed (a timeout) or not (a forbidden or broken image).
        return fetch_image_for(self.settings, request.image_url)

    def _aigc_label(self, request: VideoRequested) -> AigcLabel:
        s = self.settings
        return AigcLabel(
            Label="1",
            ContentProducer=s.label_content_producer,
            ProduceID=request.request_key,
            ReservedCode1=request.model[:64],
            ContentPropagator=s.label_content_propagator,
            PropagateID=request.request_key,
            ReservedCode2=request.variant_id,
        )
