"""One precompiled regular expression per term list, built as a trie.

Terms are matched in a ``match_view`` (lower-case, NFKC, look-alikes mapped). A term is stored under its
``compact`` key (letters and digits only), so ``"no.1"``, ``"No 1"`` and ``"NO1"`` are one term.

* With ``max_gap > 0`` up to that many separators (spaces, punctuation) may sit between any two characters
  of a term: ``g u n``, ``枪-支``, ``色 情`` all match. The safety lists use this. Otherwise separators are
  allowed (not required) only where the term itself has one: ``fast charging`` also matches
  ``fast-charging`` and ``fastcharging``, but ``gun`` does not match ``g u n``.
* A term that starts (ends) with a Latin letter must not be preceded (followed) by a Latin letter, and one
  that starts (ends) with a digit not by a digit: English matches on word boundaries (``Scunthorpe`` does
  not contain ``cunt``), while ``10000mah`` still contains ``mah`` and ``买gun`` contains ``gun``.
  Chinese terms match as substrings.

The alternation is a trie, so Python's ``re`` tests one branch per first character, and every branch
starts with a literal, which lets ``re`` skip positions whose character starts no term.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from inference.prompt.text import compact, match_view, normalise

T = TypeVar("T")

_LETTER = "a-z\u00df-\u024f"
_IS_LETTER = re.compile(f"[{_LETTER}]")
_IS_DIGIT = re.compile("[0-9]")


_WORDS = re.compile(r"[^\W_]+")
_SEPARATOR_GAP = "[\\W_]{0,2}"


@dataclass
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    terminal: bool = False
    separator_after: bool = False  # some term has a separator after this character


def term_key(term: str) -> str:
    """The key a term is stored and looked up under: normalised, viewed, compacted."""
    return compact(match_view(normalise(term)))


def _char_class(ch: str) -> str | None:
    if _IS_LETTER.match(ch):
        return _LETTER
    if _IS_DIGIT.match(ch):
        return "0-9"
    return None


class TermMatcher(Generic[T]):
    """Finds terms in a match view and gives back the value stored with each term.

    ``terms`` are (term, value) pairs; a term whose key is empty (only punctuation) is refused with
    ValueError naming it, and the first value wins when two terms share a key. ``plurals`` also accepts
    an ``s`` after every term that ends with a Latin letter.
    """

    def __init__(self, terms: Iterable[tuple[str, T]], *, max_gap: int = 0, plurals: bool = False) -> None:
        self._values: dict[str, T] = {}
        self._words: list[list[str]] = []
        for term, value in terms:
            words = _WORDS.findall(match_view(normalise(term)))
            if not words:
                raise ValueError(f"term {term!r} has no letters or digits to match")
            self._add(words, value)
            if plurals and _IS_LETTER.match(words[-1][-1]):
                self._add([*words[:-1], words[-1] + "s"], value)
        self._gap = f"[\\W_]{{0,{max_gap}}}" if max_gap > 0 else ""
        self._regex = self._compile() if self._values else None

    def _add(self, words: list[str], value: T) -> None:
        key = "".join(words)
        if key not in self._values:
            self._values[key] = value
        self._words.append(words)

    def __len__(self) -> int:
        return len(self._values)

    def _compile(self) -> re.Pattern[str]:
        root = _Node()
        for words in self._words:
            node = root
            for i, word in enumerate(words):
                for ch in word:
                    node = node.children.setdefault(ch, _Node())
                node.separator_after |= i < len(words) - 1
            node.terminal = True
        branches = "|".join(self._emit_char(ch, child, first=True) for ch, child in sorted(root.children.items()))
        return re.compile(f"(?:{branches})")

    def _emit_char(self, ch: str, node: _Node, *, first: bool) -> str:
        out = re.escape(ch)
        cls = _char_class(ch)
        if first and cls:
            out += f"(?<![{cls}].)"
        alternatives = []
        if node.children:
            inner = "|".join(self._emit_char(c, n, first=False) for c, n in sorted(node.children.items()))
            gap = self._gap or (_SEPARATOR_GAP if node.separator_after else "")
            alternatives.append(f"{gap}(?:{inner})")
        if node.terminal:
            alternatives.append(f"(?![{cls}])" if cls else "")
        if len(alternatives) == 1:
            return out + alternatives[0]
        return out + "(?:" + "|".join(alternatives) + ")"

    def finditer(self, view: str) -> Iterator[tuple[int, int, T]]:
        """(start, end, value) of each non-overlapping match, left to right, longest term first."""
        if self._regex is None:
            return
        for m in self._regex.finditer(view):
            yield m.start(), m.end(), self._values[compact(m.group())]

    def search(self, view: str) -> tuple[int, int, T] | None:
        """The leftmost match, or None."""
        if self._regex is None:
            return None
        m = self._regex.search(view)
        return None if m is None else (m.start(), m.end(), self._values[compact(m.group())])

    def values_in(self, view: str) -> list[T]:
        """Values of all matches in order, without repeats."""
        seen: list[T] = []
        for _, _, value in self.finditer(view):
            if value not in seen:
                seen.append(value)
        return seen
