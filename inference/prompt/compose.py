"""Assemble prompt phrases into readable sentences that fit the text encoder's token budget.

The estimate is additive: phrases are joined by one-token separators ("，", "。", ", ", ". ") that never
merge with their neighbours, so the prompt's estimate is the phrases' estimates plus one per phrase.

Every phrase carries a priority: when the estimate exceeds the budget the least important phrases go
first (quality words, attributes, raw selling points, lighting …); the subject is never dropped, only
shortened as a last resort. Phrases keep their reading order inside a sentence (``Section``).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import NamedTuple

from inference.prompt.tokens import PROMPT_TOKEN_BUDGET, estimate_tokens, truncate_to_tokens
from schemas.events import Locale


class Section(IntEnum):
    """Sentences of a prompt, in reading order."""

    OPENING = 0  # style, subject
    GUIDANCE = 1  # first-frame hint, channel pacing
    ACTIONS = 2  # what happens: selling points as visual actions
    SETTING = 3  # where: scene and concrete attributes
    CAMERA = 4  # how it is filmed: camera, lighting, quality


class Phrase(NamedTuple):
    """One clause of a prompt; ``priority`` 100 means never dropped (only shortened).

    A NamedTuple rather than a frozen dataclass: a prompt makes a dozen of these and construction cost
    shows in the throughput benchmark."""

    text: str
    priority: int
    section: Section
    tokens: int

    @classmethod
    def of(cls, text: str, priority: int, section: Section, known: Mapping[str, int] | None = None) -> Phrase:
        """A phrase with its token estimate (looked up in ``known`` first: precomputed for library words)."""
        tokens = known.get(text) if known is not None else None
        return cls(text, priority, section, estimate_tokens(text) if tokens is None else tokens)


MANDATORY = 100
_JOINERS = {Locale.ZH_CN: ("，", "。", "。"), Locale.EN_US: (", ", ". ", ".")}
_SEPARATOR_TOKENS = 1  # each joiner ("，", "。", ", ", ". ") is one token in the estimate
_SECTIONS = tuple(Section)


def _render(phrases: list[Phrase], language: Locale) -> str:
    comma, stop, end = _JOINERS[language]
    sections: list[list[str]] = [[] for _ in _SECTIONS]  # one pass: iterating an Enum is slow
    for p in phrases:
        sections[p.section].append(p.text)
    sentences = [comma.join(parts) for parts in sections if parts]
    if language is Locale.EN_US:
        sentences = [sentence[:1].upper() + sentence[1:] for sentence in sentences]
    return stop.join(sentences) + end


def _cost(phrases: list[Phrase]) -> int:
    return sum(p.tokens for p in phrases) + _SEPARATOR_TOKENS * len(phrases)


def _shorten_mandatory(phrases: list[Phrase], budget: int) -> list[Phrase]:
    """Cut the longest mandatory phrases until the total fits (each keeps at least its first piece)."""
    out = list(phrases)
    while _cost(out) > budget:
        i = max(range(len(out)), key=lambda k: out[k].tokens)
        excess = _cost(out) - budget
        keep = max(out[i].tokens - excess, 1)
        text = truncate_to_tokens(out[i].text, keep) or out[i].text[:1]
        if text == out[i].text:
            break
        out[i] = Phrase.of(text, out[i].priority, out[i].section)
    return out


def assemble(phrases: list[Phrase], language: Locale, budget: int = PROMPT_TOKEN_BUDGET) -> str:
    """The prompt text: phrases joined into sentences, least important dropped until it fits ``budget``."""
    kept = [p for p in phrases if p.text]
    if _cost(kept) > budget:
        order = sorted(range(len(kept)), key=lambda i: (kept[i].priority, -i))
        dropped: set[int] = set()
        total = _cost(kept)
        for i in order:
            if total <= budget or kept[i].priority >= MANDATORY:
                break
            dropped.add(i)
            total -= kept[i].tokens + _SEPARATOR_TOKENS
        kept = [p for i, p in enumerate(kept) if i not in dropped]
        kept = _shorten_mandatory(kept, budget)
    return _render(kept, language)
