"""The content safety gate: runs before any GPU time is spent on a product.

Term lists are JSON files under ``data/safety`` (``{"id", "action", "description", "zh": [...], "en": [...]}``):

* ``action: "refuse"`` — violence, adult, political, weapons, drugs, gambling, tobacco, other prohibited
  goods: any match refuses the product;
* ``action: "medical"`` — medical efficacy claims: refused unless the product's template allows them;
* ``action: "absolute"`` — advertising-law absolute terms (最佳, 第一, best …): dropped from the text or the
  product refused, per ``absolute_terms_policy``;
* ``action: "allow"`` — harmless phrases that contain a listed term (特色情侣 holds 色情, 水枪 holds 枪):
  masked before matching.

Matching is on the normalised view (NFKC, lower case, look-alike letters mapped, invisible characters
gone), tolerates up to three separators between the characters of a term (``g u n``, ``枪-支``), matches
English on word boundaries and Chinese as substrings (see ``inference.prompt.matcher``). All lists are
compiled into one trie regex at load; a check is one pass over the text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from inference.prompt.library import DEFAULT_DATA_DIR, LibraryError
from inference.prompt.matcher import TermMatcher
from inference.prompt.text import MASK, cut_spans, join_normalised, match_view, tidy

AbsolutePolicy = Literal["drop", "refuse"]
Action = Literal["refuse", "medical", "absolute", "allow"]
MAX_GAP = 3  # separators tolerated between two characters of a term


class SafetyList(BaseModel):
    """One term list file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]+$")]
    action: Action
    description: str
    zh: list[Annotated[str, StringConstraints(min_length=1)]] = Field(default_factory=list)
    en: list[Annotated[str, StringConstraints(min_length=1)]] = Field(default_factory=list)


class SafetyVerdict(BaseModel):
    """Outcome of the gate on one text: ``rule`` is ``"<list>:<term>"`` when a term refused it or was dropped
    (the first such term); ``cleaned`` is the normalised text with dropped terms cut out ('' when refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed: bool
    rule: str | None = None
    cleaned: str


@dataclass(frozen=True, slots=True)
class Hit:
    """A listed term found in a text."""

    list_id: str
    term: str
    action: Action
    description: str

    @property
    def rule(self) -> str:
        return f"{self.list_id}:{self.term}"


@dataclass(frozen=True, slots=True)
class Screening:
    """Result of screening several texts at once.

    ``refusal`` is the first refusing hit (and ``refused_index`` the text it was in) or None;
    ``cleaned`` holds each text normalised (and tidied where terms were cut out); ``dropped`` the drop hits
    and ``cut_indexes`` the texts they were cut from.
    """

    cleaned: tuple[str, ...]
    refusal: Hit | None = None
    refused_index: int | None = None
    dropped: tuple[Hit, ...] = ()
    cut_indexes: frozenset[int] = frozenset()


def load_lists(safety_dir: Path) -> list[SafetyList]:
    """Every ``*.json`` list in ``safety_dir``, validated (raises LibraryError naming the file)."""
    lists = []
    for path in sorted(safety_dir.glob("*.json")):
        try:
            lists.append(SafetyList.model_validate_json(path.read_bytes()))
        except ValidationError as exc:
            raise LibraryError(f"safety list {path} is invalid: {exc}") from exc
    if not any(lst.action != "allow" for lst in lists):
        raise LibraryError(f"no safety lists found under {safety_dir}")
    return lists


class SafetyGate:
    """Precompiled safety lists plus the absolute-terms policy. Thread-safe (immutable after init).

    ``fingerprint``: a digest of the policy and every list, equal for gates that decide alike."""

    def __init__(self, lists: Sequence[SafetyList], absolute_terms_policy: AbsolutePolicy = "drop") -> None:
        if absolute_terms_policy not in ("drop", "refuse"):
            raise ValueError(f"absolute_terms_policy must be 'drop' or 'refuse', not {absolute_terms_policy!r}")
        self.policy: AbsolutePolicy = absolute_terms_policy
        described = "\n".join([absolute_terms_policy, *(lst.model_dump_json() for lst in lists)])
        self.fingerprint = hashlib.sha256(described.encode()).hexdigest()
        allow = [(t, t) for lst in lists if lst.action == "allow" for t in (*lst.zh, *lst.en)]
        self._allow: TermMatcher[str] = TermMatcher(allow, plurals=True)
        terms = [(t, Hit(lst.id, t, lst.action, lst.description))
                 for lst in lists if lst.action != "allow" for t in (*lst.zh, *lst.en)]
        self._terms: TermMatcher[Hit] = TermMatcher(terms, max_gap=MAX_GAP, plurals=True)
        self.list_ids = tuple(lst.id for lst in lists)

    @classmethod
    def load(cls, absolute_terms_policy: AbsolutePolicy = "drop", data_dir: Path | None = None) -> SafetyGate:
        """Read the lists under ``<data_dir>/safety`` once."""
        return cls(load_lists((data_dir or DEFAULT_DATA_DIR) / "safety"), absolute_terms_policy)

    def _refuses(self, hit: Hit, medical_allowed: bool) -> bool:
        if hit.action == "refuse":
            return True
        if hit.action == "medical":
            return not medical_allowed
        return hit.action == "absolute" and self.policy == "refuse"

    def _mask_allowed(self, view: str) -> str:
        for start, end, _ in self._allow.finditer(view):
            view = view[:start] + MASK * (end - start) + view[end:]
        return view

    def screen(self, texts: Sequence[str], *, medical_allowed: bool = False) -> Screening:
        """Screen ``texts`` in one pass (they are joined with a character no term can span; see text.MASK)."""
        joined = join_normalised(texts)
        view = self._mask_allowed(match_view(joined))
        cuts: list[tuple[int, int]] = []
        dropped: list[Hit] = []
        for start, end, hit in self._terms.finditer(view):
            if self._refuses(hit, medical_allowed):
                index = joined.count(MASK, 0, start)
                return Screening(cleaned=(), refusal=hit, refused_index=index)
            if hit.action == "absolute":
                cuts.append((start, end))
                dropped.append(hit)
        if not cuts:
            return Screening(cleaned=tuple(joined.split(MASK)))
        cleaned = cut_spans(joined, cuts)
        return Screening(cleaned=tuple(tidy(p) for p in cleaned.split(MASK)), dropped=tuple(dropped),
                         cut_indexes=frozenset(joined.count(MASK, 0, start) for start, _ in cuts))

    def check(self, text: str) -> SafetyVerdict:
        """The gate on one text (medical claims count as refused: no product context here)."""
        result = self.screen([text])
        if result.refusal is not None:
            return SafetyVerdict(allowed=False, rule=result.refusal.rule, cleaned="")
        rule = result.dropped[0].rule if result.dropped else None
        return SafetyVerdict(allowed=True, rule=rule, cleaned=tidy(result.cleaned[0]))
