"""A conservative token count for the UMT5 text encoder, without loading its tokenizer.

Wan2.2 encodes prompts with UMT5-XXL and cuts them at 512 tokens (one of them the end-of-sequence token),
so anything past the cut is silently lost. The estimate errs high:

* a CJK character (and CJK / full-width punctuation): 1 token;
* a run of Latin letters: 2 tokens up to 8 letters, then 1 more per 4 letters;
* each digit and each other ASCII character: 1 token (sentencepiece often splits numbers);
* any other character: 2 tokens (4 outside the BMP: byte fallback);
* whitespace: 0.
"""

from __future__ import annotations

import re

TEXT_ENCODER_MAX_TOKENS = 512
PROMPT_TOKEN_BUDGET = TEXT_ENCODER_MAX_TOKENS - 1  # one for the end-of-sequence token

_CJK_CLASS = "\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef"
_PIECES = re.compile(f"([A-Za-z]+)|([{_CJK_CLASS}])|(\\s)|([\\x00-\\x7f])|(.)", re.DOTALL)
_LETTERS = re.compile("[A-Za-z]+")
_DROP_LETTERS_AND_SPACES = str.maketrans(dict.fromkeys(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85"
))
_LETTERS_AND_SPACES = re.compile("[A-Za-z \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85]+")
_ONE_TOKEN = re.compile(f"[{_CJK_CLASS}\\x00-\\x7f]+")
_SPACES = re.compile(r"\s+")


def _word_cost(length: int) -> int:
    return 2 if length <= 8 else 2 + (length - 5) // 4


def estimate_tokens(text: str) -> int:
    """Upper estimate of UMT5 tokens for ``text`` (without the end-of-sequence token)."""
    total = 0
    for word in _LETTERS.findall(text):
        total += _word_cost(len(word))
    # digits, symbols, CJK, other scripts (translate is fast on ASCII only, a regex on the rest)
    rest = text.translate(_DROP_LETTERS_AND_SPACES) if text.isascii() else _LETTERS_AND_SPACES.sub("", text)
    if rest.isascii():
        return total + len(rest)
    costly = _ONE_TOKEN.sub("", rest)
    total += len(rest) - len(costly)
    costly = _SPACES.sub("", costly)
    astral = len(costly.encode("utf-16-le", "surrogatepass")) // 2 - len(costly)  # two UTF-16 units each
    return total + 2 * len(costly) + 2 * astral


def _piece_cost(m: re.Match[str]) -> int:
    """Cost of one ``_PIECES`` match; summed over a text it equals ``estimate_tokens``."""
    letters, _cjk, space, _ascii, other = m.groups()
    if letters is not None:
        return _word_cost(len(letters))
    if space is not None:
        return 0
    if other is not None:
        return 4 if ord(other) > 0xFFFF else 2
    return 1


def truncate_to_tokens(text: str, budget: int) -> str:
    """The longest prefix of ``text`` whose estimate fits ``budget``, cut between pieces, trimmed.

    A Latin word is never split; an empty string comes back when not even the first piece fits.
    """
    if estimate_tokens(text) <= budget:
        return text
    used, end = 0, 0
    for m in _PIECES.finditer(text):
        cost = _piece_cost(m)
        if used + cost > budget:
            break
        used += cost
        end = m.end()
    return text[:end].rstrip()
