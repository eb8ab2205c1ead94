"""One render request -> labelled files on disk: fetch image, generate, quality gate (retry), label, encode.

Synchronous and CPU/GPU-heavy: the renderer service runs it in a worker thread, ``skuvid render`` directly.
Every failure that the request itself causes raises ``RenderError`` with a ``Reason``; anything else is a bug
or an infrastructure fault and propagates.
"""

from __future__ import annotations

import logging
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
from skuvid.settings import Settings

log = logging.getLogger(__name__)


class RenderError(Exception):
    """The request cannot become a video; ``reason`` is published in ``video.failed``."""

    def __init__(self, reason: Reason, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.details = details or {}


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

    def render(self, request: VideoRequested, out_dir: Path) -> RenderedVideo:
        self._check_model(request)
        image = self._product_image(request)
        best, attempts = self._best_attempt(request, image)
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
        try:
            # Unfitted: the generator fits it to the frame with the configured pad/crop policy.
            return fetch_image_for(self.settings, request.image_url)
        except Exception as exc:  # noqa: BLE001 - every fetch defect is the request's, reported with its reason
            raise RenderError(Reason.IMAGE_FETCH_FAILED, str(exc), {"image_url": request.image_url}) from exc

    def _best_attempt(self, request: VideoRequested, image: Image.Image | None) -> tuple[_Attempt, int]:
        """Generate until an attempt passes the gate (new seed each time); the best-scoring one and the count."""
        best: _Attempt | None = None
        attempts = 0
        for attempt in range(self.settings.quality_max_attempts):
            seed = (request.params.seed + attempt) % 2**63
            params = request.params.model_copy(update={"seed": seed})
            frames = self.generator.generate(
                prompt=request.prompt.positive, negative_prompt=request.prompt.negative, params=params, image=image
            )
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
