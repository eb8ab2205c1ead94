"""H.264 MP4 and JPEG writing, checked by decoding the files with PyAV."""

from __future__ import annotations

import hashlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from bench.postprocess import synthetic_clip
from inference.encode import (EncodeError, X264Options, centre_crop_9x16, encode_chunks, encode_mp4, probe_mp4,
                              write_jpeg)
from schemas.events import Reason

FAST = X264Options(crf=23, preset="ultrafast")


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return synthetic_clip(25, 96, 160, seed=3)


def test_mp4_is_h264_yuv420p_with_every_frame_rate_size_and_metadata(tmp_path: Path, clip: np.ndarray):
    out = encode_mp4(clip, tmp_path / "v.mp4", fps=24, options=FAST, metadata={"AIGC": '{"Label":"1"}'})
    probe = probe_mp4(out.path)
    assert (probe.codec, probe.pix_fmt, probe.width, probe.height) == ("h264", "yuv420p", 160, 96)
    assert probe.num_frames == 25 and probe.fps == Fraction(24)
    assert probe.metadata["AIGC"] == '{"Label":"1"}'
    data = out.path.read_bytes()
    assert out.bytes == len(data) and out.sha256 == hashlib.sha256(data).hexdigest()
    assert (out.width, out.height, out.num_frames, out.fps) == (160, 96, 25, 24)
    assert out.duration_s == pytest.approx(25 / 24)


def test_moov_atom_comes_first_for_progressive_playback(tmp_path: Path, clip: np.ndarray):
    data = encode_mp4(clip, tmp_path / "v.mp4", fps=24, options=FAST).path.read_bytes()
    assert 0 <= data.find(b"moov") < data.find(b"mdat")


def test_colours_survive_the_round_trip(tmp_path: Path):
    frames = np.zeros((4, 64, 96, 3), np.uint8)
    frames[:, :, :32] = (220, 70, 50)
    frames[:, :, 32:64] = (40, 200, 90)
    frames[:, :, 64:] = (30, 60, 210)
    path = encode_mp4(frames, tmp_path / "c.mp4", fps=24, options=X264Options(crf=12, preset="ultrafast")).path
    with av.open(str(path)) as container:
        decoded = next(container.decode(video=0)).to_ndarray(format="rgb24")
    for x in (16, 48, 80):
        assert np.abs(decoded[32, x].astype(int) - frames[0, 32, x]).max() <= 4


def test_chunks_encode_like_one_array(tmp_path: Path, clip: np.ndarray):
    whole = encode_mp4(clip, tmp_path / "a.mp4", fps=24, options=FAST)
    buffer = np.empty((8, *clip.shape[1:]), np.uint8)

    def reused_buffer_chunks():
        for first in range(0, clip.shape[0], 8):
            chunk = buffer[:min(8, clip.shape[0] - first)]
            chunk[...] = clip[first:first + chunk.shape[0]]
            yield chunk

    chunked = encode_chunks(reused_buffer_chunks(), tmp_path / "b.mp4", fps=24, options=FAST)
    assert chunked.num_frames == 25 and chunked.sha256 == whole.sha256


def test_vbv_cap_keeps_five_seconds_of_480p_noise_under_two_megabytes(tmp_path: Path):
    noise = np.random.default_rng(0).integers(0, 256, (121, 480, 832, 3), dtype=np.uint8)
    out = encode_mp4(noise, tmp_path / "noise.mp4", fps=24,
                     options=X264Options(crf=23, preset="ultrafast", maxrate_kbps=2000, bufsize_kbps=4000))
    assert out.bytes < 2_000_000
    uncapped = encode_mp4(noise[:24], tmp_path / "free.mp4", fps=24,
                          options=X264Options(crf=23, preset="ultrafast", maxrate_kbps=0, bufsize_kbps=0))
    assert uncapped.bytes * 5 > 2_000_000  # without the cap the same content would not fit


@pytest.mark.parametrize("bad", [np.zeros((3, 95, 160, 3), np.uint8), np.zeros((3, 96, 161, 3), np.uint8),
                                 np.zeros((3, 96, 160, 3), np.float32), np.zeros((0, 96, 160, 3), np.uint8)])
def test_unencodable_frames_are_refused(tmp_path: Path, bad: np.ndarray):
    with pytest.raises(EncodeError) as info:
        encode_mp4(bad, tmp_path / "x.mp4", fps=24, options=FAST)
    assert info.value.reason == Reason.INVALID_OUTPUT
    assert list(tmp_path.iterdir()) == []


def test_encoder_failure_leaves_no_file_behind(tmp_path: Path, clip: np.ndarray):
    with pytest.raises(EncodeError, match="bogus"):
        encode_mp4(clip, tmp_path / "x.mp4", fps=24, options=X264Options(preset="bogus"))
    assert list(tmp_path.iterdir()) == []


def test_centre_crop_is_nine_by_sixteen_and_even():
    frames = np.zeros((2, 480, 832, 3), np.uint8)
    frames[:, :, 416] = 255  # centre column
    crop = centre_crop_9x16(frames)
    assert crop.shape == (2, 480, 270, 3) and crop.base is not None
    assert crop[0, 0, 135, 0] == 255 or crop[0, 0, 134, 0] == 255
    assert centre_crop_9x16(np.zeros((1, 832, 480, 3), np.uint8)).shape == (1, 832, 468, 3)
    tall = centre_crop_9x16(np.zeros((1, 1000, 400, 3), np.uint8))
    assert tall.shape[1:3] == (710, 400)


def test_jpeg_poster_is_written_with_size_and_digest(tmp_path: Path, clip: np.ndarray):
    poster = write_jpeg(clip[4], tmp_path / "p.jpg")
    data = poster.path.read_bytes()
    assert data[:3] == b"\xff\xd8\xff" and (poster.width, poster.height) == (160, 96)
    assert poster.bytes == len(data) and poster.sha256 == hashlib.sha256(data).hexdigest()
