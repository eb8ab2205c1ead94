"""finish_video end to end: labels and captions are read back from the encoded files (PyAV decode), next to
an unmarked encode of the same frames."""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import pytest

from bench.postprocess import synthetic_clip
from inference.encode import X264Options, encode_mp4, probe_mp4
from inference.fonts import find_cjk_font
from inference.labels import AigcLabel, read_aigc
from inference.overlay import PLAYER_CONTROLS_FRACTION, Box, OverlayError, caption_frames, layout_captions
from inference.postprocess import Renditions, finish_video, plan_labels
from inference.quality import FrameError
from schemas.events import OverlayCaption

FPS, FRAMES, HEIGHT, WIDTH = 24, 49, 192, 320
LABEL = AigcLabel(content_producer="skuvid", produce_id="cd" * 32, content_propagator="skuvid")
CAPTION = OverlayCaption(text="限时5折！买一赠三", start_s=0.5, end_s=1.25)


@pytest.fixture(scope="module")
def font() -> Path:
    return find_cjk_font(None)


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return synthetic_clip(FRAMES, HEIGHT, WIDTH, seed=4)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory, clip: np.ndarray, font: Path) -> Renditions:
    original = clip.copy()
    out = finish_video(clip, out_dir=tmp_path_factory.mktemp("out"), basename="req", mark_text="AI生成",
                       corner="top-right", font_path=font, captions=[CAPTION], aigc=LABEL, fps=FPS, crf=18,
                       preset="ultrafast", feed_crop=True)
    assert np.array_equal(clip, original)  # the caller's frames are untouched
    return out


@pytest.fixture(scope="module")
def unmarked(tmp_path_factory: pytest.TempPathFactory, clip: np.ndarray) -> np.ndarray:
    path = encode_mp4(clip, tmp_path_factory.mktemp("plain") / "plain.mp4", fps=FPS,
                      options=X264Options(crf=18, preset="ultrafast")).path
    return decode(path)


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def region_diff(a: np.ndarray, b: np.ndarray, box: Box) -> np.ndarray:
    """Mean absolute difference per frame inside ``box``."""
    sl = np.s_[:, box.y:box.bottom, box.x:box.right]
    return np.abs(a[sl].astype(np.int16) - b[sl]).mean(axis=(1, 2, 3))


def test_outputs_decode_with_the_requested_format(rendered: Renditions):
    probe = probe_mp4(rendered.mp4.path)
    assert (probe.codec, probe.pix_fmt, probe.width, probe.height) == ("h264", "yuv420p", WIDTH, HEIGHT)
    assert probe.num_frames == FRAMES and probe.fps == FPS
    assert rendered.mp4.path.name == "req.mp4" and rendered.poster.path.name == "req.jpg"
    assert rendered.mp4.duration_s == pytest.approx(FRAMES / FPS)
    assert (rendered.poster.width, rendered.poster.height) == (WIDTH, HEIGHT)


def test_aigc_metadata_round_trips_from_video_poster_and_feed(rendered: Renditions):
    assert read_aigc(rendered.mp4.path) == LABEL
    assert read_aigc(rendered.poster.path) == LABEL
    assert read_aigc(rendered.feed_mp4.path) == LABEL


def test_mark_is_drawn_on_every_frame_from_the_first(rendered: Renditions, unmarked: np.ndarray, clip, font):
    plan = plan_labels(width=WIDTH, height=HEIGHT, num_frames=FRAMES, fps=FPS, mark_text="AI生成",
                       corner="top-right", font_path=font, captions=[CAPTION])
    marked = decode(rendered.mp4.path)
    inside = region_diff(marked, unmarked, plan.mark.box)
    assert inside.min() > 10  # visibly different on every frame, including frame 0
    outside = region_diff(marked, unmarked, Box(0, HEIGHT // 3, WIDTH // 2, HEIGHT // 3))
    assert outside.max() < 2  # and nowhere else (away from the caption band)
    assert plan.mark.box.h >= math.ceil(0.05 * HEIGHT)


def test_caption_shows_only_inside_its_time_window(rendered: Renditions, unmarked: np.ndarray, font):
    plan = plan_labels(width=WIDTH, height=HEIGHT, num_frames=FRAMES, fps=FPS, mark_text="AI生成",
                       corner="top-right", font_path=font, captions=[CAPTION])
    (placed,) = plan.captions
    assert (placed.start, placed.stop) == (12, 30)  # 0.5 s <= i / 24 < 1.25 s
    diff = region_diff(decode(rendered.mp4.path), unmarked, placed.patch.box)
    assert diff[12:30].min() > 10
    assert max(diff[:12].max(), diff[30:].max()) < 2


def test_feed_cut_is_nine_by_sixteen_and_labelled_at_its_own_size(rendered: Renditions):
    feed = rendered.feed_mp4
    assert (feed.width, feed.height, feed.num_frames) == (108, 192, FRAMES)
    assert probe_mp4(feed.path).num_frames == FRAMES


def test_poster_is_the_requested_frame_with_the_mark(tmp_path: Path, clip: np.ndarray, font: Path):
    frames = clip.copy()
    frames[7] = 0
    out = finish_video(frames, out_dir=tmp_path, basename="p", mark_text="AI-generated", corner="bottom-left",
                       font_path=font, captions=[], aigc=LABEL, fps=FPS, crf=23, preset="ultrafast",
                       poster_frame=7)
    with av.open(str(out.poster.path)) as container:
        poster = next(container.decode(video=0)).to_ndarray(format="rgb24")
    plan = plan_labels(width=WIDTH, height=HEIGHT, num_frames=FRAMES, fps=FPS, mark_text="AI-generated",
                       corner="bottom-left", font_path=font, captions=[])
    box = plan.mark.box
    assert poster[box.y:box.bottom, box.x:box.right].mean() > 20  # the mark, on black
    assert poster[: HEIGHT // 2].mean() < 3  # frame 7 is the black one
    assert out.feed_mp4 is None
    with pytest.raises(FrameError, match="poster_frame"):
        finish_video(frames, out_dir=tmp_path, basename="q", mark_text="AI生成", corner="top-left",
                     font_path=font, captions=[], aigc=LABEL, fps=FPS, crf=23, preset="ultrafast",
                     poster_frame=FRAMES)


def test_captions_avoid_the_mark_and_the_player_controls(font: Path):
    mark = Box(250, 130, 60, 20)  # a bottom-right mark
    captions = [OverlayCaption(text="全场包邮 Free shipping on every order today", start_s=0, end_s=2),
                OverlayCaption(text="限时5折", start_s=1, end_s=3)]
    placed = layout_captions(captions, frame_w=WIDTH, frame_h=HEIGHT, fps=FPS, num_frames=FRAMES,
                             font_path=font, avoid=[mark])
    controls_top = HEIGHT - PLAYER_CONTROLS_FRACTION * HEIGHT
    for item in placed:
        box = item.patch.box
        assert not box.intersects(mark) and box.bottom <= controls_top
        assert 0 <= box.x and box.right <= WIDTH
    assert not placed[0].patch.box.intersects(placed[1].patch.box)  # overlapping in time: stacked


def test_caption_frame_window_and_out_of_clip_captions():
    assert caption_frames(OverlayCaption(text="x", start_s=1.0, end_s=2.0), 24, 121) == (24, 48)
    assert caption_frames(OverlayCaption(text="x", start_s=4.5, end_s=9.0), 24, 121) == (108, 121)
    late = OverlayCaption(text="x", start_s=6.0, end_s=7.0)
    assert layout_captions([late], frame_w=WIDTH, frame_h=HEIGHT, fps=FPS, num_frames=FRAMES,
                           font_path=find_cjk_font(None)) == []


def test_caption_too_long_for_a_tiny_frame_is_refused(font: Path):
    with pytest.raises(OverlayError, match="too long|does not fit"):
        layout_captions([OverlayCaption(text="限" * 60, start_s=0, end_s=1)], frame_w=64, frame_h=64, fps=FPS,
                        num_frames=10, font_path=font)
