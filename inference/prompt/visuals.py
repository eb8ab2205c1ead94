"""Product text → visual phrases: cleaned titles, selling points as scenes, attributes as concrete looks.

Video models render written words badly and cannot show a number, so a selling point becomes an action
or a scene ("续航30小时" → someone using it from morning to night), vague praise ("好看的设计") becomes the
concrete material, colour and shape from the attributes (or is dropped), and marketing noise ("包邮",
"限时5折") never reaches the prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from inference.prompt.library import AttributeRole, Library, Rule, Template
from inference.prompt.matcher import TermMatcher
from inference.prompt.text import cut_spans, has_cjk, has_word, match_view, squash, tidy
from inference.prompt.tokens import truncate_to_tokens
from schemas.events import Locale

MAX_RULES_PER_POINT = 2
RAW_POINT_TOKENS = 24  # an unmatched selling point is kept as a short clause at most
ATTRIBUTE_VALUE_TOKENS = 16
TITLE_TOKENS = 80

_BRACKETED = re.compile(r"【[^】]*】|\[[^\]]*\]|〖[^〗]*〗")
_BRACKETS = re.compile(r"[【】\[\]〖〗]")
_CJK_RUNS = re.compile(r"([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+)")


@dataclass(frozen=True, slots=True)
class SellingVisuals:
    """Selling points turned into phrases for one language.

    ``actions``: rule phrases, most important first; ``raw``: unmatched points kept as short clauses;
    ``wants_details``: some point was only vague praise, so the concrete attribute details should be shown.
    """

    actions: tuple[str, ...]
    raw: tuple[str, ...]
    wants_details: bool


class Visualiser:
    """The rule, vague-word, noise and attribute matchers, compiled once from a Library."""

    def __init__(self, library: Library) -> None:
        self._template_rules = {t.id: self._rule_matcher(t.rules) for t in library.templates.values()}
        self._common_rules = self._rule_matcher(library.rules)
        self._vague: TermMatcher[bool] = TermMatcher(((w, True) for w in library.vague.vague), plurals=False)
        self._filler: TermMatcher[bool] = TermMatcher(((w, True) for w in library.vague.filler), plurals=False)
        self._noise: TermMatcher[bool] = TermMatcher(((w, True) for w in library.title_noise.terms), plurals=False)
        patterns = library.title_noise.patterns
        self._noise_patterns = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
        roles = library.attributes.roles
        self._roles: TermMatcher[AttributeRole] = TermMatcher(
            (key, role) for role in roles.values() for key in role.keys
        )
        self._values_en: TermMatcher[str] = TermMatcher(library.attributes.values_en.items())

    @staticmethod
    def _rule_matcher(rules: list[Rule]) -> TermMatcher[Rule]:
        return TermMatcher(((k, rule) for rule in rules for k in rule.keywords), plurals=True)

    def _noise_spans(self, view: str) -> list[tuple[int, int]]:
        spans = [(s, e) for s, e, _ in self._noise.finditer(view)]
        if self._noise_patterns is not None:
            spans += [m.span() for m in self._noise_patterns.finditer(view)]
        return spans

    def clean_title(self, title: str) -> str:
        """Brackets (【包邮】), marketing noise and vague praise removed; '' when nothing is left."""
        unbracketed = _BRACKETED.sub(" ", title)
        text = unbracketed if has_word(unbracketed) else _BRACKETS.sub(" ", title)
        view = match_view(text)
        spans = self._noise_spans(view) + [(s, e) for s, e, _ in self._vague.finditer(view)]
        text = tidy(cut_spans(text, spans))
        return truncate_to_tokens(text, TITLE_TOKENS) if has_word(text) else ""

    def clean_point(self, point: str) -> str:
        """A selling point without marketing noise ("当天发货", "5折"); '' when nothing is left."""
        text = tidy(cut_spans(point, self._noise_spans(match_view(point))))
        return text if has_word(text) else ""

    def _unvague(self, point: str) -> str | None:
        """The point without vague words; None when it was nothing but vague praise and filler."""
        view = match_view(point)
        spans = [(s, e) for s, e, _ in self._vague.finditer(view)]
        if not spans:
            return point
        rest = cut_spans(point, spans)
        fill = [(s, e) for s, e, _ in self._filler.finditer(match_view(rest))]
        if not has_word(cut_spans(rest, fill)):
            return None
        return tidy(rest)

    def selling_visuals(self, points: list[str], template: Template, language: Locale) -> SellingVisuals:
        """Each cleaned point → up to two rule phrases (template rules first, then common rules), else a
        short raw clause in the prompt's language, else (vague praise) a request for concrete details."""
        template_rules = self._template_rules[template.id]
        actions: list[str] = []
        raw: list[str] = []
        wants_details = False
        for point in points:
            view = match_view(point)
            rules = template_rules.values_in(view) or self._common_rules.values_in(view)
            if rules:
                for rule in rules[:MAX_RULES_PER_POINT]:
                    phrase = rule.get(language)
                    if phrase not in actions:
                        actions.append(phrase)
                continue
            concrete = self._unvague(point)
            if concrete is None:
                wants_details = True
            elif language is Locale.ZH_CN or not has_cjk(concrete):
                clause = truncate_to_tokens(concrete, RAW_POINT_TOKENS)
                if clause and clause not in raw:
                    raw.append(clause)
        return SellingVisuals(tuple(actions), tuple(raw), wants_details)

    def _english_value(self, value: str) -> str:
        """Chinese words of an attribute value translated by the word list; untranslatable words dropped."""
        if not has_cjk(value):
            return value
        parts = []
        for i, run in enumerate(_CJK_RUNS.split(value)):
            if i % 2:
                parts.extend(self._values_en.values_in(match_view(run)))
            elif has_word(run):
                parts.append(run)
        return squash(" ".join(parts))

    def attribute_phrases(self, attributes: list[tuple[str, str]], language: Locale) -> list[str]:
        """One phrase per visual role (material, colour, shape, texture, finish), first attribute wins."""
        seen: set[int] = set()
        phrases = []
        for key, value in attributes:
            found = self._roles.search(match_view(key))
            if found is None or id(found[2]) in seen:
                continue
            role = found[2]
            shown = value if language is Locale.ZH_CN else self._english_value(value)
            shown = truncate_to_tokens(tidy(shown), ATTRIBUTE_VALUE_TOKENS)
            if not has_word(shown):
                continue
            seen.add(id(role))
            phrases.append((role.zh if language is Locale.ZH_CN else role.en).format(value=shown))
        return phrases
