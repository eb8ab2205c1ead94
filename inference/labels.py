"""AIGC labels required by GB 45438-2025: the visible mark on every frame and the implicit metadata label.

Explicit label: "AI生成" (per locale) drawn semi-transparently in a corner of every frame, from the first
frame on, glyph ink at least 5 % of the frame's shorter side, with a font checked to have the glyphs.
Implicit label: a metadata entry ``AIGC`` whose value is JSON of the seven fields of the standard, in the
MP4 (``use_metadata_tags``) and as XMP in the poster JPEG. ``read_aigc`` reads either back.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Annotated, Literal
from xml.sax.saxutils import escape

import av
from PIL import Image
from pydantic import ConfigDict, Field, StringConstraints, ValidationError

from inference.fonts import missing_glyphs
from inference.overlay import PLAYER_CONTROLS_FRACTION, Patch, TextStyle, render_text
from schemas.events import Locale, Model, Reason
from skuvid.errors import SkuvidError

Corner = Literal["top-left", "top-right", "bottom-left", "bottom-right"]

MIN_MARK_HEIGHT_FRACTION = 0.05
AIGC_KEY = "AIGC"
# Namespace of the AIGC property in image XMP (TC260 practice guide for implicit labels).
AIGC_XMP_NAMESPACE = "http://www.tc260.org.cn/ns/AIGC/1.0/"

_MARK_TEXT: dict[Locale, str] = {Locale.ZH_CN: "AI生成", Locale.EN_US: "AI-generated"}
_JPEG_MAGIC = b"\xff\xd8\xff"

Ascii = Annotated[str, StringConstraints(pattern=r"^[\x20-\x7e]*$", max_length=256)]


class LabelError(SkuvidError, ValueError):
    """A label cannot be drawn or written, or a file carries no readable AIGC label."""

    reason = Reason.INVALID_OUTPUT


class AigcLabel(Model):
    """The implicit label: the seven GB 45438-2025 metadata fields (printable ASCII values).

    ``label`` "1" states the content is AI-generated. ``produce_id`` is the request key, so the file
    can be traced back to its render request; ``propagate_id`` is the propagator's id of the published item.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True)

    label: Ascii = Field(default="1", alias="Label")
    content_producer: Ascii = Field(alias="ContentProducer")
    produce_id: Ascii = Field(alias="ProduceID")
    reserved_code1: Ascii = Field(default="", alias="ReservedCode1")
    content_propagator: Ascii = Field(default="", alias="ContentPropagator")
    propagate_id: Ascii = Field(default="", alias="PropagateID")
    reserved_code2: Ascii = Field(default="", alias="ReservedCode2")

    def to_json(self) -> str:
        """The metadata value: compact JSON with the standard's field names, in the standard's order."""
        return json.dumps(self.model_dump(by_alias=True), separators=(",", ":"), ensure_ascii=True)

    @classmethod
    def from_json(cls, value: str) -> AigcLabel:
        """Parse a metadata value; raises LabelError naming the bad value."""
        try:
            return cls.model_validate(json.loads(value), by_alias=True)
        except (ValueError, ValidationError) as exc:
            raise LabelError(f"AIGC metadata {value[:200]!r} is not a valid label: {exc}") from exc


def mark_text_for(locale: Locale) -> str:
    """The visible label text for a market: "AI生成" for zh-CN, "AI-generated" for en-US."""
    return _MARK_TEXT[Locale(locale)]


def render_mark(text: str, *, frame_w: int, frame_h: int, corner: Corner, font_path: Path,
                height_fraction: float = 0.06, opacity: float = 0.85) -> Patch:
    """The visible mark as a patch placed in ``corner``, ready to blend into every frame.

    Bottom corners sit above the mobile player-controls band (bottom 12 %), so a paused player never hides it.

    ``height_fraction`` (>= 0.05) of the shorter side is the minimum glyph-ink height; ``opacity`` (0, 1]
    scales the text alpha (the plate behind it stays lighter). Raises LabelError when the font lacks a
    glyph of ``text`` (it would draw boxes) or the mark does not fit the frame.
    """
    if height_fraction < MIN_MARK_HEIGHT_FRACTION:
        raise LabelError(f"mark height_fraction {height_fraction} is below the required 0.05")
    if not 0 < opacity <= 1:
        raise LabelError(f"mark opacity {opacity} is outside (0, 1]")
    lacking = missing_glyphs(font_path, text)
    if lacking:
        raise LabelError(f"font {str(font_path)!r} has no glyph for {''.join(lacking)!r} of mark {text!r}")
    short = min(frame_w, frame_h)
    target = max(math.ceil(MIN_MARK_HEIGHT_FRACTION * short), math.ceil(height_fraction * short))
    style = TextStyle(text_alpha=round(255 * opacity), plate_alpha=round(110 * opacity))
    rgba = render_text(text, font_path, ink_height_px=target, style=style)
    margin = max(4, round(0.03 * short))
    height, width = rgba.shape[:2]
    if width + 2 * margin > frame_w or height + 2 * margin > frame_h:
        raise LabelError(f"mark {text!r} ({width}x{height}) does not fit a {frame_w}x{frame_h} frame")
    controls = math.ceil(PLAYER_CONTROLS_FRACTION * frame_h)
    x = margin if corner.endswith("left") else frame_w - margin - width
    y = margin if corner.startswith("top") else frame_h - controls - margin - height
    if y < 0:
        raise LabelError(f"mark {text!r} ({width}x{height}) does not fit above the player controls "
                         f"of a {frame_w}x{frame_h} frame")
    return Patch(rgba, x, y)


def aigc_metadata(label: AigcLabel) -> dict[str, str]:
    """Container metadata carrying the implicit label (MP4 needs movflags use_metadata_tags)."""
    return {AIGC_KEY: label.to_json()}


def aigc_xmp(label: AigcLabel) -> bytes:
    """An XMP packet holding the implicit label, for JPEG posters."""
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:TC260="{AIGC_XMP_NAMESPACE}">'
        f"<TC260:AIGC>{escape(label.to_json())}</TC260:AIGC>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="w"?>'
    ).encode()


def read_aigc(path: Path) -> AigcLabel:
    """The implicit label of a skuvid MP4 (container metadata) or poster JPEG (XMP).

    Raises LabelError when the file has no AIGC entry or it does not parse.
    """
    with open(path, "rb") as handle:
        magic = handle.read(3)
    if magic == _JPEG_MAGIC:
        return AigcLabel.from_json(_xmp_value(path))
    try:
        with av.open(str(path)) as container:
            metadata = dict(container.metadata)
    except av.FFmpegError as exc:
        raise LabelError(f"cannot read {str(path)!r} as a media file: {exc}") from exc
    for key, value in metadata.items():
        if key.upper() == AIGC_KEY:
            return AigcLabel.from_json(value)
    raise LabelError(f"{str(path)!r} has no {AIGC_KEY} metadata (keys: {sorted(metadata)})")


def _xmp_value(path: Path) -> str:
    with Image.open(path) as image:
        packet = image.info.get("xmp")
    if not packet:
        raise LabelError(f"{str(path)!r} has no XMP packet")
    start = packet.find(b"<x:xmpmeta")
    end = packet.rfind(b"</x:xmpmeta>")
    if start < 0 or end < 0:
        raise LabelError(f"{str(path)!r} has a malformed XMP packet")
    root = ET.fromstring(packet[start:end + len(b"</x:xmpmeta>")])
    node = root.find(f".//{{{AIGC_XMP_NAMESPACE}}}{AIGC_KEY}")
    if node is None or node.text is None:
        raise LabelError(f"{str(path)!r} has XMP but no {AIGC_KEY} property")
    return node.text
