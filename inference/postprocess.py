"""From accepted frames to the files a request publishes: labelled H.264 MP4, poster JPEG, optional 9:16 feed cut.

Per rendition the overlays are rasterised once (a LabelPlan: caption patches with their frame windows,
then the AIGC mark on top so nothing covers it) and blended chunk by chunk into a reused buffer on the way
to the encoder: the caller's frames are never modified and no second full-size copy is made. The feed cut
is planned at its own size (a crop of a labelled frame could cut the corner mark off, and 5 % of its
shorter side is a different height).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.encode import (EncodedFile, ImageFile, X264Options, centre_crop_9x16, encode_chunks,
                              require_encodable, write_jpeg)
from inference.labels import AigcLabel, Corner, aigc_metadata, aigc_xmp, render_mark
from inference.overlay import Patch, PlacedCaption, blend, layout_captions
from inference.quality import FrameError, pick_poster_frame, require_frames
from schemas.events import OverlayCaption

CHUNK_FRAMES = 16


@dataclass(frozen=True)
class Renditions:
    """Every file written for one request; ``feed_mp4`` is None unless the 9:16 cut was asked for."""

    mp4: EncodedFile
    poster: ImageFile
    feed_mp4: EncodedFile | None


@dataclass(frozen=True, eq=False)
class LabelPlan:
    """Rasterised overlays of one rendition: captions with their frame windows, then the mark on every frame."""

    mark: Patch
    captions: tuple[PlacedCaption, ...]

    def apply(self, chunk: np.ndarray, first: int) -> None:
        """Blend the overlays IN PLACE into ``chunk``, which holds frames ``first .. first + len(chunk) - 1``."""
        for caption in self.captions:
            start, stop = max(caption.start - first, 0), min(caption.stop - first, chunk.shape[0])
            if start < stop:
                blend(chunk, caption.patch, start, stop)
        blend(chunk, self.mark)


def plan_labels(*, width: int, height: int, num_frames: int, fps: int, mark_text: str, corner: Corner,
                font_path: Path, captions: Sequence[OverlayCaption], mark_height_fraction: float = 0.06,
                mark_opacity: float = 0.85) -> LabelPlan:
    """Rasterise the mark and lay out the captions (clear of the mark) for a ``width`` x ``height`` clip."""
    mark = render_mark(mark_text, frame_w=width, frame_h=height, corner=corner, font_path=font_path,
                       height_fraction=mark_height_fraction, opacity=mark_opacity)
    placed = layout_captions(captions, frame_w=width, frame_h=height, fps=fps, num_frames=num_frames,
                             font_path=font_path, avoid=[mark.box])
    return LabelPlan(mark, tuple(placed))


def labelled_chunks(frames: np.ndarray, plan: LabelPlan, chunk_frames: int = CHUNK_FRAMES) -> Iterator[np.ndarray]:
    """Labelled copies of consecutive chunks of ``frames``; the SAME buffer is reused for every chunk."""
    buffer = np.empty((min(chunk_frames, frames.shape[0]), *frames.shape[1:]), dtype=np.uint8)
    for first in range(0, frames.shape[0], chunk_frames):
        chunk = buffer[:min(chunk_frames, frames.shape[0] - first)]
        np.copyto(chunk, frames[first:first + chunk.shape[0]])
        plan.apply(chunk, first)
        yield chunk


def label_frames(frames: np.ndarray, plan: LabelPlan) -> np.ndarray:
    """A labelled copy of the whole clip (for inspection and tests; the encoder path streams instead)."""
    out = frames.copy()
    plan.apply(out, 0)
    return out


def finish_video(frames: np.ndarray, *, out_dir: Path, basename: str, mark_text: str, corner: Corner,
                 font_path: Path, captions: Sequence[OverlayCaption], aigc: AigcLabel, fps: int, crf: int,
                 preset: str, feed_crop: bool = False, maxrate_kbps: int = 2000, bufsize_kbps: int = 4000,
                 threads: int = 0, poster_frame: int | None = None, jpeg_quality: int = 88,
                 mark_height_fraction: float = 0.06, mark_opacity: float = 0.85) -> Renditions:
    """Label, encode and write ``<basename>.mp4``, ``<basename>.jpg`` (and ``<basename>.feed.mp4``) in ``out_dir``.

    ``frames``: uint8 (F, H, W, 3) RGB with even H and W; never modified. ``poster_frame``: the index the
    quality gate chose (GateResult.best_frame); None picks the sharpest non-blank sampled frame. The poster
    carries the visible mark and, as XMP, the AIGC label. Raises FrameError/EncodeError (INVALID_OUTPUT),
    LabelError, OverlayError or FontError.
    """
    require_frames(frames)
    require_encodable(frames)
    index = pick_poster_frame(frames) if poster_frame is None else poster_frame
    if not 0 <= index < frames.shape[0]:
        raise FrameError(f"poster_frame {index} is outside 0..{frames.shape[0] - 1}")
    out_dir.mkdir(parents=True, exist_ok=True)
    x264 = X264Options(crf=crf, preset=preset, maxrate_kbps=maxrate_kbps, bufsize_kbps=bufsize_kbps,
                       threads=threads)
    metadata = aigc_metadata(aigc)
    style = {"fps": fps, "mark_text": mark_text, "corner": corner, "font_path": font_path, "captions": captions,
             "mark_height_fraction": mark_height_fraction, "mark_opacity": mark_opacity}

    plan = plan_labels(width=frames.shape[2], height=frames.shape[1], num_frames=frames.shape[0], **style)
    mp4 = encode_chunks(labelled_chunks(frames, plan), out_dir / f"{basename}.mp4", fps=fps, options=x264,
                        metadata=metadata)
    still = frames[index:index + 1].copy()
    plan.apply(still, index)
    poster = write_jpeg(still[0], out_dir / f"{basename}.jpg", quality=jpeg_quality, xmp=aigc_xmp(aigc))

    feed = None
    if feed_crop:
        cropped = centre_crop_9x16(frames)
        feed_plan = plan_labels(width=cropped.shape[2], height=cropped.shape[1], num_frames=cropped.shape[0],
                                **style)
        feed = encode_chunks(labelled_chunks(cropped, feed_plan), out_dir / f"{basename}.feed.mp4", fps=fps,
                             options=x264, metadata=metadata)
    return Renditions(mp4, poster, feed)
