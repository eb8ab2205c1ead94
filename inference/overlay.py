"""Text drawn onto video frames: RGBA text patches, their numpy alpha blend, and promo-caption layout.

Text is rasterised once with Pillow into a small RGBA patch; every frame then gets the patch by one
vectorised integer alpha blend over a (frames, h, w, 3) view, never by a per-frame PIL draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from schemas.events import OverlayCaption, Reason
from skuvid.errors import SkuvidError

# Mobile players put their controls (scrubber, buttons) over roughly the bottom eighth of the picture.
PLAYER_CONTROLS_FRACTION = 0.12
SIDE_MARGIN_FRACTION = 0.05
CAPTION_HEIGHT_FRACTION = 0.055
MIN_CAPTION_HEIGHT_FRACTION = 0.035
_MAX_FONT_PX = 1000


class OverlayError(SkuvidError, ValueError):
    """Text cannot be placed as required (frame too small for the text, bad times)."""

    reason = Reason.RENDER_ERROR


@dataclass(frozen=True)
class Box:
    """Axis-aligned rectangle in frame pixels; ``x``/``y`` is the top-left corner."""

    x: int
    y: int
    w: int
    h: int

    @property
    def right(self) -> int:
        return self.x + self.w

    @property
    def bottom(self) -> int:
        return self.y + self.h

    def intersects(self, other: Box, gap: int = 0) -> bool:
        """True when the boxes overlap or come closer than ``gap`` pixels."""
        return not (self.right + gap <= other.x or other.right + gap <= self.x
                    or self.bottom + gap <= other.y or other.bottom + gap <= self.y)


@dataclass(frozen=True, eq=False)
class Patch:
    """An RGBA bitmap (h, w, 4) uint8, straight (not premultiplied) alpha, placed at ``box`` in the frame."""

    rgba: np.ndarray
    x: int
    y: int

    @property
    def box(self) -> Box:
        return Box(self.x, self.y, int(self.rgba.shape[1]), int(self.rgba.shape[0]))


@dataclass(frozen=True, eq=False)
class PlacedCaption:
    """A caption patch and the frames ``[start, stop)`` it is drawn on."""

    caption: OverlayCaption
    patch: Patch
    start: int
    stop: int


@dataclass(frozen=True)
class TextStyle:
    """How a text patch looks: white text with a dark outline on a translucent dark plate."""

    text_alpha: int = 235
    plate_alpha: int = 110
    outline: bool = True


def blend(frames: np.ndarray, patch: Patch, start: int = 0, stop: int | None = None) -> None:
    """Alpha-blend ``patch`` into ``frames[start:stop]`` IN PLACE (uint8 (F, H, W, 3)).

    Integer arithmetic with rounding: out = (dst * (255 - a) + src * a + 127) // 255. Raises OverlayError
    when the patch does not lie fully inside the frame.
    """
    box, (height, width) = patch.box, frames.shape[1:3]
    if box.x < 0 or box.y < 0 or box.right > width or box.bottom > height:
        raise OverlayError(f"patch {box} does not fit a {width}x{height} frame")
    alpha = patch.rgba[..., 3:4].astype(np.uint16)
    src = patch.rgba[..., :3].astype(np.uint16) * alpha + 127
    inverse = 255 - alpha
    region = frames[start:stop, box.y:box.bottom, box.x:box.right]
    mixed = region.astype(np.uint16)
    mixed *= inverse
    mixed += src
    mixed //= 255
    region[...] = mixed


def render_text(text: str, font_path: Path, *, ink_height_px: int, style: TextStyle = TextStyle()) -> np.ndarray:
    """Rasterise ``text`` (may hold newlines) to an RGBA array: white glyphs, dark outline, translucent plate.

    The font size is the smallest whose rendered longest line has >= ``ink_height_px`` rows of at least
    half-covered glyph pixels: a measured minimum text height (the GB 45438 5 % rule), not a font metric.
    """
    font = _font_for_ink_height(str(font_path), max(1, ink_height_px), _height_probe(text))
    spacing = max(2, font.size // 5)
    outline = max(1, round(font.size / 14)) if style.outline else 0
    scratch = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = scratch.multiline_textbbox((0, 0), text, font=font, spacing=spacing,
                                                          stroke_width=outline)
    pad = max(2, round(font.size * 0.3))
    size = (right - left + 2 * pad, bottom - top + 2 * pad)
    plate = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(plate).rounded_rectangle((0, 0, size[0] - 1, size[1] - 1), radius=pad,
                                            fill=(0, 0, 0, style.plate_alpha))
    ink = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(ink).multiline_text((pad - left, pad - top), text, font=font, spacing=spacing,
                                       fill=(255, 255, 255, style.text_alpha), stroke_width=outline,
                                       stroke_fill=(0, 0, 0, style.text_alpha))
    return np.asarray(Image.alpha_composite(plate, ink))


def caption_frames(caption: OverlayCaption, fps: int, num_frames: int) -> tuple[int, int]:
    """Frame range ``[start, stop)`` of the frames i with ``start_s <= i / fps < end_s``, clipped to the clip."""
    eps = 1e-9
    start = max(0, math.ceil(caption.start_s * fps - eps))
    stop = min(num_frames, math.ceil(caption.end_s * fps - eps))
    return start, max(start, stop)


def layout_captions(captions: Sequence[OverlayCaption], *, frame_w: int, frame_h: int, fps: int,
                    num_frames: int, font_path: Path, avoid: Sequence[Box] = (),
                    style: TextStyle = TextStyle()) -> list[PlacedCaption]:
    """Place captions centred above the player-controls band, clear of ``avoid`` (the AIGC mark).

    Captions overlapping in time are stacked upwards; captions outside the clip are dropped. Text wider
    than the safe width wraps, and shrinks only down to MIN_CAPTION_HEIGHT_FRACTION of the shorter side.
    Raises OverlayError when a caption cannot fit above the controls band.
    """
    short = min(frame_w, frame_h)
    margin = max(4, round(SIDE_MARGIN_FRACTION * short))
    safe_bottom = frame_h - math.ceil(PLAYER_CONTROLS_FRACTION * frame_h) - margin // 2
    placed: list[PlacedCaption] = []
    for caption in captions:
        start, stop = caption_frames(caption, fps, num_frames)
        if start >= stop:
            continue
        rgba = _fit_caption(caption.text, font_path, short, frame_w - 2 * margin, style)
        busy = [*avoid, *(p.patch.box for p in placed if p.start < stop and start < p.stop)]
        y = _lowest_free_y(rgba.shape, frame_w, safe_bottom, busy, gap=margin // 2)
        if y < margin // 2:
            raise OverlayError(f"caption {caption.text!r} does not fit above the player controls "
                               f"of a {frame_w}x{frame_h} frame")
        x = (frame_w - rgba.shape[1]) // 2
        placed.append(PlacedCaption(caption, Patch(rgba, x, y), start, stop))
    return placed


def _lowest_free_y(shape: tuple[int, ...], frame_w: int, bottom: int, busy: Sequence[Box], gap: int) -> int:
    """Lowest top edge so a centred box of ``shape`` ends above ``bottom`` and clears every busy box."""
    height, width = shape[0], shape[1]
    x = (frame_w - width) // 2
    y = bottom - height
    moved = True
    while moved:
        moved = False
        for other in busy:
            if Box(x, y, width, height).intersects(other, gap):
                y = other.y - gap - height
                moved = True
    return y


def _fit_caption(text: str, font_path: Path, short: int, max_width: int, style: TextStyle) -> np.ndarray:
    """The largest caption rendering not wider than ``max_width``: wrap first, then shrink to the floor."""
    floor = max(8, round(MIN_CAPTION_HEIGHT_FRACTION * short))  # below 8 px CJK glyphs are unreadable
    target = max(floor, round(CAPTION_HEIGHT_FRACTION * short))
    for height in range(target, floor - 1, -1):
        for lines in range(1, 4):
            rgba = render_text(_wrap(text, lines), font_path, ink_height_px=height, style=style)
            if rgba.shape[1] <= max_width:
                return rgba
    raise OverlayError(f"caption {text!r} is too long for a frame {max_width} px wide between its margins")


def _wrap(text: str, lines: int) -> str:
    """Split ``text`` into ``lines`` lines of similar length, breaking at spaces when the text has them."""
    if lines == 1:
        return text
    words = text.split(" ") if " " in text else list(text)
    joiner = " " if " " in text else ""
    per_line = math.ceil(len(text) / lines)
    rows: list[str] = []
    current = ""
    for word in words:
        candidate = f"{current}{joiner}{word}" if current else word
        if current and len(candidate) > per_line and len(rows) < lines - 1:
            rows.append(current)
            candidate = word
        current = candidate
    rows.append(current)
    return "\n".join(rows)


def _height_probe(text: str) -> str:
    """The longest line: its ink height drives the font size (all lines share one size)."""
    return max(text.split("\n"), key=len)


def _font_for_ink_height(path: str, target: int, probe: str) -> ImageFont.FreeTypeFont:
    """The smallest font size whose rendered ``probe`` has >= ``target`` rows of at least half-covered ink."""
    size = target
    while size <= _MAX_FONT_PX:
        measured = _ink_rows(_font(path, size), probe)
        if measured >= target:
            return _font(path, size)
        size = max(size + 1, math.floor(size * target / max(1, measured)))
    raise OverlayError(f"font {path!r} cannot reach an ink height of {target} px for {probe!r}")


def _ink_rows(font: ImageFont.FreeTypeFont, text: str) -> int:
    """Rows of the rendered text holding a pixel covered at least 50 % (what a viewer sees as glyph)."""
    left, top, right, bottom = font.getbbox(text)
    canvas = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(canvas).text((1 - left, 1 - top), text, font=font, fill=255)
    rows = np.flatnonzero((np.asarray(canvas) >= 128).any(axis=1))
    return int(rows[-1] - rows[0] + 1) if rows.size else 0


@lru_cache(maxsize=64)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)
