"""H.264 MP4 and JPEG writing: the bytes that go to the CDN, with their size and sha256.

MP4: libx264, yuv420p (BT.709, limited range, tagged), constant frame rate, CRF capped by VBV
(maxrate/bufsize, so a noisy clip cannot blow the mobile size budget), ``+faststart`` (moov first: playback
starts before the download ends) and ``+use_metadata_tags`` (custom keys such as ``AIGC`` survive).
Files are written under a temporary name and renamed, so a crash never leaves a half file to upload.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import Colorspace, VideoReformatter
from PIL import Image

from schemas.events import Reason
from skuvid.errors import SkuvidError

_BT709 = 1  # AVCOL_SPC_BT709 == AVCOL_PRI_BT709 == AVCOL_TRC_BT709
_LIMITED_RANGE = 1  # AVCOL_RANGE_MPEG
_CHUNK = 1 << 20


class EncodeError(SkuvidError, RuntimeError):
    """Frames cannot be encoded (bad shape, odd size) or the encoder failed."""

    reason = Reason.INVALID_OUTPUT


@dataclass(frozen=True)
class X264Options:
    """libx264 rate control: CRF for quality, VBV maxrate/bufsize (kbit/s, kbit) as the size cap.

    Worst-case size is about (maxrate * duration + bufsize) / 8: 2000/4000 keep a 5 s clip under 1.8 MB.
    ``threads`` 0 lets x264 choose; 1 pins it to one core (benchmarks, packed CPU workers).
    """

    crf: int = 23
    preset: str = "veryfast"
    maxrate_kbps: int = 2000
    bufsize_kbps: int = 4000
    threads: int = 0

    def codec_options(self) -> dict[str, str]:
        return {"crf": str(self.crf), "preset": self.preset, "maxrate": f"{self.maxrate_kbps}k",
                "bufsize": f"{self.bufsize_kbps}k", "threads": str(self.threads)}


@dataclass(frozen=True)
class EncodedFile:
    """An encoded video on disk: what video.ready reports about it."""

    path: Path
    bytes: int
    sha256: str
    width: int
    height: int
    num_frames: int
    fps: int
    duration_s: float


@dataclass(frozen=True)
class ImageFile:
    """An encoded still (the poster) on disk."""

    path: Path
    bytes: int
    sha256: str
    width: int
    height: int


@dataclass(frozen=True)
class VideoProbe:
    """What a decoder sees in an MP4: used to check outputs and in tests."""

    codec: str
    pix_fmt: str
    width: int
    height: int
    num_frames: int
    fps: Fraction
    metadata: dict[str, str]


def require_encodable(frames: np.ndarray) -> None:
    """Raise EncodeError unless ``frames`` is uint8 (F>=1, H, W, 3) with even H and W (yuv420p needs it)."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        shape = getattr(frames, "shape", None)
        raise EncodeError(f"frames must be uint8 (F, H, W, 3), got {getattr(frames, 'dtype', type(frames))} {shape}")
    if frames.shape[0] < 1 or frames.shape[1] % 2 or frames.shape[2] % 2:
        raise EncodeError(f"frames need F >= 1 and even H, W for yuv420p, got {frames.shape}")


def encode_mp4(frames: np.ndarray, path: Path, *, fps: int, options: X264Options,
               metadata: Mapping[str, str] | None = None) -> EncodedFile:
    """Encode RGB ``frames`` (uint8 (F, H, W, 3)) to an H.264 MP4 at ``path`` with container ``metadata``."""
    return encode_chunks([frames], path, fps=fps, options=options, metadata=metadata)


def encode_chunks(chunks: Iterable[np.ndarray], path: Path, *, fps: int, options: X264Options,
                  metadata: Mapping[str, str] | None = None) -> EncodedFile:
    """Encode consecutive frame chunks (each uint8 (n, H, W, 3), same H and W) as one MP4 at ``path``.

    Chunks are consumed one at a time, so a caller may reuse one buffer for every chunk. ``path`` is
    replaced atomically. Raises EncodeError for malformed chunks or an encoder failure.
    """
    if fps < 1:
        raise EncodeError(f"fps must be >= 1, got {fps}")
    partial = path.with_name(f".{path.name}.partial")
    try:
        num_frames, height, width = _write_mp4(chunks, partial, fps=fps, options=options, metadata=metadata or {})
        os.replace(partial, path)
    except av.FFmpegError as exc:
        raise EncodeError(f"libx264 ({options.preset}, crf {options.crf}) failed writing {str(path)!r}: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    size, digest = file_digest(path)
    return EncodedFile(path, size, digest, width, height, num_frames, fps, num_frames / fps)


def write_jpeg(frame: np.ndarray, path: Path, *, quality: int = 88, xmp: bytes | None = None) -> ImageFile:
    """Write one RGB frame (H, W, 3) uint8 as a baseline JPEG (replaced atomically), with an XMP packet."""
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise EncodeError(f"poster frame must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
    partial = path.with_name(f".{path.name}.partial")
    extra = {"xmp": xmp} if xmp else {}
    try:
        Image.fromarray(frame).save(partial, format="JPEG", quality=quality, optimize=True, **extra)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    size, digest = file_digest(path)
    return ImageFile(path, size, digest, int(frame.shape[1]), int(frame.shape[0]))


def centre_crop_9x16(frames: np.ndarray) -> np.ndarray:
    """The largest centred 9:16 (portrait) window with even sides, as a view (no copy)."""
    height, width = frames.shape[1:3]
    crop_w = min(width, (height * 9 // 16) // 2 * 2)
    crop_h = min(height, (crop_w * 16 // 9) // 2 * 2)
    x = (width - crop_w) // 2
    y = (height - crop_h) // 2
    return frames[:, y:y + crop_h, x:x + crop_w]


def probe_mp4(path: Path) -> VideoProbe:
    """Decode every frame of ``path`` and report codec, pixel format, size, frame count, rate, metadata."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        context = stream.codec_context
        return VideoProbe(context.name, context.pix_fmt, context.width, context.height, count,
                          Fraction(stream.average_rate), dict(container.metadata))


def file_digest(path: Path) -> tuple[int, str]:
    """Size in bytes and hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _write_mp4(chunks: Iterable[np.ndarray], path: Path, *, fps: int, options: X264Options,
               metadata: Mapping[str, str]) -> tuple[int, int, int]:
    """Mux every frame of ``chunks``; returns (frames, height, width). Raises EncodeError on bad input."""
    count, size = 0, None
    with av.open(str(path), mode="w", format="mp4",
                 container_options={"movflags": "+faststart+use_metadata_tags"}) as container:
        container.metadata.update(metadata)
        stream = None
        to_yuv = VideoReformatter()  # one swscale context for the whole clip, not one per frame
        for chunk in chunks:
            require_encodable(chunk)
            if stream is None:
                size = chunk.shape[1:3]
                stream = _add_h264(container, fps, options, height=size[0], width=size[1])
            elif chunk.shape[1:3] != size:
                raise EncodeError(f"chunk of {chunk.shape[1:3]} frames after {size} frames in one video")
            for rgb in chunk:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                yuv = to_yuv.reformat(frame, format="yuv420p", dst_colorspace=Colorspace.ITU709)
                container.mux(stream.encode(yuv))
            count += chunk.shape[0]
        if stream is None:
            raise EncodeError("no frames to encode")
        container.mux(stream.encode(None))
    return count, int(size[0]), int(size[1])


def _add_h264(container: av.container.OutputContainer, fps: int, options: X264Options, *, height: int,
              width: int) -> av.VideoStream:
    stream = container.add_stream("libx264", rate=fps, options=options.codec_options())
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuv420p"
    context = stream.codec_context
    context.colorspace = context.color_primaries = context.color_trc = _BT709
    context.color_range = _LIMITED_RANGE
    return stream
