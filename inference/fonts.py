"""Find a font that really draws CJK text, so the visible "AI生成" mark is never a row of boxes.

Pillow falls back to nothing: a font without a glyph silently draws its ``.notdef`` glyph (a box, or
nothing at all). Coverage is therefore checked by rendering: a covered character's bitmap must be
non-empty and differ from the bitmap of a code point no font maps (U+FFFF, a Unicode noncharacter).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

from schemas.events import Reason
from skuvid.errors import Outcome, SkuvidError

# Debian/Ubuntu, Fedora/RHEL, Arch and Alpine homes of the fonts the project installs or accepts.
KNOWN_CJK_FONTS: tuple[Path, ...] = (
    Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),
    Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/opentype/noto/NotoSansCJKsc-Regular.otf"),
    Path("/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/wqy-microhei/wqy-microhei.ttc"),
    Path("/usr/share/fonts/wenquanyi/wqy-microhei/wqy-microhei.ttc"),
)

# Every character the marks and usual promo copy need; "生成" is the part non-CJK fonts lack.
MARK_CHARACTERS = "AI生成-generated"
_NOT_A_CHARACTER = "\uffff"
_PROBE_SIZE_PX = 32


class FontError(SkuvidError, RuntimeError):
    """No usable CJK font: the label cannot be drawn, so no video may be published: the process cannot work."""

    reason = Reason.RENDER_ERROR
    kind = Outcome.FATAL


def missing_glyphs(font_path: Path, text: str) -> list[str]:
    """Characters of ``text`` (whitespace ignored) that ``font_path`` would draw as tofu.

    Raises FontError when the file cannot be opened as a font.
    """
    font = _probe_font(str(font_path))
    notdef = _bitmap(font, _NOT_A_CHARACTER)
    missing: list[str] = []
    for char in dict.fromkeys(text):
        if char.isspace():
            continue
        bitmap = _bitmap(font, char)
        if not bitmap[2] or bitmap == notdef:
            missing.append(char)
    return missing


def find_cjk_font(explicit: Path | None = None, *, required: str = MARK_CHARACTERS,
                  candidates: tuple[Path, ...] = KNOWN_CJK_FONTS) -> Path:
    """The font to draw labels and captions with.

    ``explicit`` (Settings.font_path) wins but must exist and cover ``required``; otherwise the first of
    ``candidates`` that exists and covers ``required`` is returned. Raises FontError naming what was tried.
    """
    if explicit is not None:
        _require_coverage(explicit, required)
        return explicit
    tried: list[str] = []
    for path in candidates:
        if not path.is_file():
            tried.append(f"{path} (absent)")
            continue
        lacking = missing_glyphs(path, required)
        if not lacking:
            return path
        tried.append(f"{path} (lacks {''.join(lacking)!r})")
    raise FontError(
        "no CJK font found for the AIGC mark; install Debian's fonts-wqy-microhei "
        f"(apt-get install -y fonts-wqy-microhei) or set SKUVID_FONT_PATH. Tried: {'; '.join(tried)}"
    )


def _require_coverage(path: Path, required: str) -> None:
    if not path.is_file():
        raise FontError(f"font_path {str(path)!r} does not exist")
    lacking = missing_glyphs(path, required)
    if lacking:
        raise FontError(f"font {str(path)!r} has no glyph for {''.join(lacking)!r} (it would draw boxes)")


@lru_cache(maxsize=16)
def _probe_font(path: str) -> ImageFont.FreeTypeFont:
    try:
        return ImageFont.truetype(path, _PROBE_SIZE_PX)
    except OSError as exc:
        raise FontError(f"cannot open font {path!r}: {exc}") from exc


def _bitmap(font: ImageFont.FreeTypeFont, char: str) -> tuple[tuple[int, int], bytes, bool]:
    """Size, pixels and inkedness of one character as the font would draw it."""
    mask = font.getmask(char, mode="L")
    pixels = bytes(mask)
    return mask.size, pixels, any(pixels)
