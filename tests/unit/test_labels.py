"""AIGC labels: CJK font discovery that detects tofu, the visible mark's size and place, the metadata label."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from inference.encode import write_jpeg
from inference.fonts import FontError, find_cjk_font, missing_glyphs
from inference.labels import AigcLabel, LabelError, aigc_xmp, mark_text_for, read_aigc, render_mark
from inference.overlay import PLAYER_CONTROLS_FRACTION
from schemas.events import Locale, Reason

WQY = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")
DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")  # Latin-only: draws 生成 as .notdef boxes
LABEL = AigcLabel(content_producer="skuvid", produce_id="ab" * 32, content_propagator="shop-cdn",
                  propagate_id="item-42", reserved_code1="sha256:00ff")


@pytest.fixture(scope="module")
def font() -> Path:
    return find_cjk_font(None)


def test_mark_text_follows_the_locale():
    assert mark_text_for(Locale.ZH_CN) == "AI生成"
    assert mark_text_for(Locale.EN_US) == "AI-generated"
    assert mark_text_for("en-US") == "AI-generated"


def test_the_installed_cjk_font_is_found_and_covers_the_mark(font: Path):
    assert font.is_file()
    assert missing_glyphs(font, "AI生成 AI-generated 限时5折！买一赠三") == []


@pytest.mark.skipif(not DEJAVU.is_file(), reason="needs the DejaVu Latin font as a tofu example")
def test_a_latin_font_is_detected_as_tofu_for_cjk():
    assert missing_glyphs(DEJAVU, "AI生成") == ["生", "成"]
    with pytest.raises(FontError, match="生成") as info:
        find_cjk_font(DEJAVU)
    assert info.value.reason == Reason.RENDER_ERROR
    with pytest.raises(FontError, match="lacks"):
        find_cjk_font(None, candidates=(Path("/nonexistent/font.ttc"), DEJAVU))


def test_missing_fonts_raise_a_clear_error(tmp_path: Path):
    with pytest.raises(FontError, match="does not exist"):
        find_cjk_font(tmp_path / "nope.ttf")
    with pytest.raises(FontError, match="fonts-wqy-microhei"):
        find_cjk_font(None, candidates=(tmp_path / "nope.ttc",))
    junk = tmp_path / "junk.ttf"
    junk.write_bytes(b"not a font")
    with pytest.raises(FontError, match="cannot open"):
        find_cjk_font(junk)


def text_fill_rows_cols(patch_rgba: np.ndarray) -> tuple[int, int]:
    """Height and width of the white glyph fill, pixels at least half white (not outline, not plate)."""
    fill = (patch_rgba[..., 3] > 150) & (patch_rgba[..., :3].min(axis=-1) > 128)
    rows, cols = np.flatnonzero(fill.any(axis=1)), np.flatnonzero(fill.any(axis=0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


@pytest.mark.parametrize("width,height", [(832, 480), (480, 832), (1280, 704), (270, 480), (160, 96)])
@pytest.mark.parametrize("text", ["AI生成", "AI-generated"])
def test_mark_glyphs_are_at_least_five_percent_of_the_shorter_side(font: Path, width, height, text):
    patch = render_mark(text, frame_w=width, frame_h=height, corner="top-right", font_path=font,
                        height_fraction=0.05)
    ink_h, ink_w = text_fill_rows_cols(patch.rgba)
    assert ink_h >= math.ceil(0.05 * min(width, height))
    assert ink_w > ink_h  # a row of glyphs, not a single box


def test_mark_is_semi_transparent(font: Path):
    alpha = render_mark("AI生成", frame_w=832, frame_h=480, corner="top-left", font_path=font,
                        opacity=0.8).rgba[..., 3]
    assert 0 < alpha.max() < 255 and (alpha == 0).any()


@pytest.mark.parametrize("corner", ["top-left", "top-right", "bottom-left", "bottom-right"])
def test_mark_sits_in_its_corner_inside_the_frame_and_above_player_controls(font: Path, corner):
    width, height = 832, 480
    box = render_mark("AI生成", frame_w=width, frame_h=height, corner=corner, font_path=font).box
    assert 0 < box.x and box.right < width and 0 < box.y
    assert box.bottom <= height - PLAYER_CONTROLS_FRACTION * height
    assert (box.x < width / 2) == corner.endswith("left")
    assert (box.y < height / 2) == corner.startswith("top")


def test_mark_refuses_tofu_fonts_and_undersized_text(font: Path):
    if DEJAVU.is_file():
        with pytest.raises(LabelError, match="no glyph"):
            render_mark("AI生成", frame_w=832, frame_h=480, corner="top-right", font_path=DEJAVU)
    with pytest.raises(LabelError, match="0.05"):
        render_mark("AI生成", frame_w=832, frame_h=480, corner="top-right", font_path=font, height_fraction=0.04)
    with pytest.raises(LabelError, match="does not fit"):
        render_mark("AI-generated", frame_w=40, frame_h=480, corner="top-right", font_path=font)


def test_aigc_json_has_the_seven_standard_fields_in_order():
    assert LABEL.to_json() == (
        '{"Label":"1","ContentProducer":"skuvid","ProduceID":"' + "ab" * 32 + '","ReservedCode1":"sha256:00ff",'
        '"ContentPropagator":"shop-cdn","PropagateID":"item-42","ReservedCode2":""}'
    )
    assert AigcLabel.from_json(LABEL.to_json()) == LABEL


def test_aigc_values_must_be_printable_ascii():
    with pytest.raises(ValidationError):
        AigcLabel(content_producer="斯库", produce_id="x")
    with pytest.raises(ValidationError):
        AigcLabel(content_producer="skuvid", produce_id="a\nb")
    with pytest.raises(LabelError):
        AigcLabel.from_json('{"Label": "1"}')
    with pytest.raises(LabelError):
        AigcLabel.from_json("not json")


def test_jpeg_xmp_label_round_trips(tmp_path: Path):
    frame = np.full((32, 48, 3), 128, np.uint8)
    poster = write_jpeg(frame, tmp_path / "p.jpg", xmp=aigc_xmp(LABEL))
    assert read_aigc(poster.path) == LABEL
    bare = write_jpeg(frame, tmp_path / "bare.jpg")
    with pytest.raises(LabelError, match="no XMP"):
        read_aigc(bare.path)


def test_read_aigc_refuses_files_without_a_label(tmp_path: Path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(LabelError) as info:
        read_aigc(junk)
    assert info.value.reason == Reason.INVALID_OUTPUT
