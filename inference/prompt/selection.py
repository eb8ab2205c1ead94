"""Which template a category gets, which style a name means, and stable choices by hash.

Choices never use Python's ``hash()`` (salted per process): they use BLAKE2b of the input, so every
planner replica and every restart picks the same template words for the same product and variant.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

from inference.prompt.errors import ContentRefused
from inference.prompt.library import GENERIC_TEMPLATE, Library, Style, Template
from inference.prompt.matcher import TermMatcher, term_key
from inference.prompt.text import match_view, normalise
from schemas.events import Reason

T = TypeVar("T")
CACHE_SIZE = 4096


def stable_int(*parts: str) -> int:
    """A 64-bit integer that depends only on ``parts`` (same on every machine and run)."""
    digest = hashlib.blake2b("\x1f".join(parts).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def pick(options: Sequence[T], seed: int, salt: int) -> T:
    """One of ``options``, chosen by ``seed``; different ``salt`` values choose independently."""
    return options[(seed >> (8 * salt)) % len(options)]


class Selector:
    """Category → template (exact alias, then the longest alias inside the category text, then generic);
    style name → style key (key, alias, or the style word itself)."""

    def __init__(self, library: Library) -> None:
        self.templates = library.templates
        self.styles = library.styles
        self._exact: dict[str, Template] = {}
        for template in library.templates.values():
            for alias in (template.id, *template.aliases):
                self._exact.setdefault(term_key(alias), template)
        self._aliases: TermMatcher[Template] = TermMatcher(
            (alias, t) for t in library.templates.values() for alias in t.aliases
        )
        self._category_cache: dict[str, Template] = {}
        self._style_names: dict[str, str] = {}
        for key, style in library.styles.items():
            for name in (key, style.zh, style.en, *style.aliases):
                self._style_names.setdefault(term_key(name), key)
            self._style_names[key] = key  # the common case: the key itself, no normalising needed

    def template_for(self, category: str) -> Template:
        """The template for a free-text category; unknown categories get the generic template.

        Results are memoised per category string (catalogs use few distinct categories); the memo is
        emptied when it reaches CACHE_SIZE entries so it stays bounded.
        """
        template = self._category_cache.get(category)
        if template is None:
            if len(self._category_cache) >= CACHE_SIZE:
                self._category_cache.clear()
            template = self._category_cache[category] = self._resolve(category)
        return template

    def _resolve(self, category: str) -> Template:
        key = term_key(category)
        exact = self._exact.get(key)
        if exact is not None:
            return exact
        longest: tuple[int, Template] | None = None
        for start, end, template in self._aliases.finditer(match_view(normalise(category))):
            if longest is None or end - start > longest[0]:
                longest = (end - start, template)
        return longest[1] if longest else self.templates[GENERIC_TEMPLATE]

    def style_key(self, name: str) -> str:
        """The curated style key for ``name``; ContentRefused(INVALID_PARAMS) names an unknown style."""
        key = self._style_names.get(name) or (self._style_names.get(term_key(name)) if name.strip() else None)
        if key is None:
            known = ", ".join(sorted(self.styles))
            raise ContentRefused(Reason.INVALID_PARAMS, f"style:{name}", f"unknown style {name!r}; known: {known}")
        return key

    def style(self, name: str) -> Style:
        return self.styles[self.style_key(name)]
