"""Text normalisation shared by the safety gate and the prompt builder.

Two forms of a text are used:

* ``normalise(text)``: NFKC (full-width ``ｇｕｎ`` → ``gun``, ``①`` → ``1``), invisible characters removed
  (zero-width spaces, soft hyphens, bidi marks), control characters turned into spaces. This is the text
  that goes on into prompts and overlays.
* ``match_view(normalised)``: the same text, lower-cased and with look-alike Cyrillic/Greek letters mapped
  to Latin (``gυn`` → ``gun``). It has exactly the same length as its input, so a span found in the view
  is the same span in the normalised text (that is how dropped terms are cut out).

``str.lower`` is used instead of ``str.casefold`` because it keeps the length (the one exception, U+0130,
is mapped to ``i`` first); for the Latin terms the lists hold the two agree.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

# Never produced by NFKC of ordinary text and never part of a term: joins fields in one scan, masks
# allow-listed phrases. A word character (Yi syllable) so it neither counts as a separator nor as Latin.
MASK = "\ua000"

_INVISIBLE = [0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E, 0x3164, 0xFEFF, 0xFFA0]
_INVISIBLE += [*range(0x200B, 0x2010), *range(0x202A, 0x202F), *range(0x2060, 0x2070), *range(0xFE00, 0xFE10)]
_CONTROLS = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]

_KEEP_MASK_TABLE: dict[int, str | None] = {cp: None for cp in _INVISIBLE}
_KEEP_MASK_TABLE.update({cp: " " for cp in _CONTROLS})
_CLEAN_TABLE = {**_KEEP_MASK_TABLE, ord(MASK): " "}

# Cyrillic and Greek letters that look like Latin ones (lower case; the view is lower-cased first).
_CONFUSABLES = {
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "һ": "h", "ԁ": "d", "ԛ": "q",
    "ԝ": "w", "ɡ": "g", "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o",
    "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ı": "i", "ſ": "s",
}
_VIEW_TABLE = str.maketrans({"İ": "i", **_CONFUSABLES, **{k.upper(): v for k, v in _CONFUSABLES.items()}})


def _any_of(codepoints) -> re.Pattern[str]:
    """A search for any of ``codepoints``: ``str.translate`` looks every character up in its table, a regex
    character class finds out in C whether there is anything to translate at all (mostly there is not)."""
    return re.compile("[" + "".join(re.escape(chr(cp)) for cp in sorted(codepoints)) + "]")


_HAS_VIEW_CHAR = _any_of(_VIEW_TABLE)
_HAS_KEEP_MASK_CHAR = _any_of(_KEEP_MASK_TABLE)
_HAS_CLEAN_CHAR = _any_of(_CLEAN_TABLE)

_SEPARATORS = re.compile(r"[\W_]+")
_WORD = re.compile(r"[^\W_]")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def normalise(text: str) -> str:
    """NFKC, invisible characters removed, controls as spaces. Whitespace is kept as is (length matters)."""
    text = unicodedata.normalize("NFKC", text)
    return text.translate(_CLEAN_TABLE) if _HAS_CLEAN_CHAR.search(text) else text


def join_normalised(texts: Sequence[str]) -> str:
    """``normalise`` of each text, joined by MASK: one NFKC call unless a text holds MASK itself.

    Equal to joining the separately normalised texts: MASK is a starter that composes with nothing.
    """
    raw = MASK.join(texts)
    if raw.count(MASK) == len(texts) - 1:
        joined = unicodedata.normalize("NFKC", raw)
        return joined.translate(_KEEP_MASK_TABLE) if _HAS_KEEP_MASK_CHAR.search(joined) else joined
    return MASK.join(normalise(t) for t in texts)


def match_view(normalised: str) -> str:
    """Lower-cased, look-alikes mapped to Latin; same length as ``normalised`` (see module doc)."""
    view = (normalised.translate(_VIEW_TABLE) if _HAS_VIEW_CHAR.search(normalised) else normalised).lower()
    if len(view) != len(normalised):  # pragma: no cover - only if Unicode adds a length-changing lowercase
        view = "".join(ch.lower()[:1] or ch for ch in normalised.translate(_VIEW_TABLE))
    return view


def compact(text: str) -> str:
    """Letters and digits only: the key under which a term and its spaced-out spellings meet."""
    return _SEPARATORS.sub("", text)


def squash(text: str) -> str:
    """Runs of whitespace to one space, trimmed: what goes into a prompt."""
    return " ".join(text.split())


def has_word(text: str) -> bool:
    """True when ``text`` holds at least one letter or digit (any script)."""
    return _WORD.search(text) is not None


def has_cjk(text: str) -> bool:
    """True when ``text`` holds a Chinese, Japanese or Korean character."""
    return _CJK.search(text) is not None


def strip_invisible(text: str) -> str:
    """Only the invisible and control characters removed (no NFKC): for text shown to people as written."""
    return squash(text.translate(_CLEAN_TABLE) if _HAS_CLEAN_CHAR.search(text) else text)


_TRAILING_JUNK = " ,.;:!?，。；：！？、-–—/|·~_*+&"
_LEADING_JUNK = _TRAILING_JUNK + "的"
_SPACE_BEFORE_CLOSING = re.compile(r" ([,.;:!?，。；：！？、）)】\]])")


def tidy(text: str) -> str:
    """After words were cut out: spaces squashed, dangling punctuation (and a leading 的) trimmed.

    Brackets are kept (they may close a model name); separators at either end go, and a space before closing
    punctuation. (Squashed text has no whitespace but single inner spaces, so ``str.strip`` with the separators
    does what a regex did, without a pass over the text.)
    """
    text = squash(text)
    if " " in text and _SPACE_BEFORE_CLOSING.search(text):
        text = _SPACE_BEFORE_CLOSING.sub(r"\1", text)
    return text.lstrip(_LEADING_JUNK).rstrip(_TRAILING_JUNK)


def cut_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` without the given (start, end) spans; spans may overlap and come in any order."""
    if not spans:
        return text
    pieces, last = [], 0
    for start, end in sorted(spans):
        if start > last:
            pieces.append(text[last:start])
        last = max(last, end)
    pieces.append(text[last:])
    return "".join(pieces)
