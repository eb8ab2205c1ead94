"""One render request -> labelled files on disk: fetch image, generate, quality gate (retry), label, encode.

Synchronous and CPU/GPU-heavy: the renderer service runs it in a worker thread, ``skuvid render`` directly.
Every failure that the request itself causes raises ``RenderError`` with a ``Reason``; anything else is a bug
or an infrastructure fault and propagates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

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

    def render(self, request: VideoRequested, out_dir: Path, *, image: Image.Image | None = None,
               progress: Progress | None = None) -> RenderedVideo:
        """``image``: the product photo when the caller fetched it already (else it is fetched here).
        ``progress(stage, step, total)`` hears of each stage and denoising step (for a terminal)."""
        report = progress or _silent
        self._check_model(request)
        if image is None and request.image_url:
            report("fetching image", None, None)
            image = self._product_image(request)
        best, attempts = self._best_attempt(request, image, report)
        passed = best.gate.passed
        if not passed and not self.settings.quality_publish_best_below_gate:
            raise RenderError(
                Reason.QUALITY_GATE,
                f"no attempt passed the quality gate in {self.settings.quality_max_attempts}: {best.gate.failures}",
                best.gate.failure_details(attempts),
            )
        report("labelling and encoding", None, None)
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

    def _best_attempt(self, request: VideoRequested, image: Image.Image | None,
                      report: Progress) -> tuple[_Attempt, int]:
        """Generate until an attempt passes the gate (new seed each time); the best-scoring one and the count."""
        best: _Attempt | None = None
        attempts = 0
        for attempt in range(self.settings.quality_max_attempts):
            seed = (request.params.seed + attempt) % 2**63
            params = request.params.model_copy(update={"seed": seed})
            stage = f"generating (attempt {attempt + 1})"
            report(stage, 0, params.steps)
            on_step = None if report is _silent else (lambda n, total, stage=stage: report(stage, n, total))
            frames = self.generator.generate(
                prompt=request.prompt.positive, negative_prompt=request.prompt.negative, params=params, image=image,
                on_step=on_step,
            )
            report("quality gate", None, None)
            gate = self.gate.evaluate(frames, request.prompt.positive, image)
            attempts = attempt + 1
            log.info("%s attempt %d seed %d: %s %s", request.sku, attempt + 1, seed, gate.passed, gate.failures)
            if best is None or gate.score > best.gate.score:
                best = _Attempt(frames, gate, seed)
            if gate.passed:
                break
        assert best is not None
        return best, attempts

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
