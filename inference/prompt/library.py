"""The merchandiser-editable data behind the prompt engine: templates, styles, rules, word lists.

Everything lives as JSON under ``inference/prompt/data`` (or another folder given to ``load_library``):

* ``templates/<id>.json`` — one category template each (aliases, preferred styles, scenes, cameras,
  lighting, selling-point rules, Chinese and English);
* ``styles.json`` — the curated style words; ``rules.json`` — selling-point rules every template falls
  back on; ``attributes.json`` — attribute roles and Chinese → English value words; ``vague.json`` —
  vague words; ``title_noise.json`` — marketing noise cut from titles; ``common.json`` — negative prompts,
  sentence frames, channel and image phrases;
* ``safety/<list>.json`` — the safety gate's term lists (read by ``inference.prompt.safety``).

Files are validated when loaded; a bad file raises ``LibraryError`` naming the file and the problem, so a
typo in a merchandiser's edit stops the service at start-up instead of producing odd prompts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from schemas.events import Locale
from skuvid.errors import Outcome, SkuvidError

DEFAULT_DATA_DIR = Path(__file__).parent / "data"
GENERIC_TEMPLATE = "generic"

Text = Annotated[str, StringConstraints(min_length=1, max_length=300)]
Key = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=32)]


class LibraryError(SkuvidError, ValueError):
    """A data file is missing or invalid; the message names the file. The engine cannot start without it."""

    kind = Outcome.FATAL


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Bilingual(_Data):
    """One phrase in both prompt languages."""

    zh: Text
    en: Text

    def get(self, language: Locale) -> str:
        return self.zh if language is Locale.ZH_CN else self.en


class Style(Bilingual):
    """A curated style control word; ``aliases`` are other names a promo or a caller may use."""

    aliases: list[Text] = Field(default_factory=list)


class Rule(_Data):
    """Selling point → visual action: any keyword in a selling point puts the phrase in the prompt."""

    keywords: list[Text] = Field(min_length=1)
    zh: Text
    en: Text

    def get(self, language: Locale) -> str:
        return self.zh if language is Locale.ZH_CN else self.en


class Scenery(_Data):
    """A template's words in one language; a variant picks one scene, camera and lighting phrase."""

    noun: Text
    scenes: list[Text] = Field(min_length=1)
    cameras: list[Text] = Field(min_length=1)
    lighting: list[Text] = Field(min_length=1)


class Template(_Data):
    """A category template. Bump ``version`` on any edit: it enters every prompt's hash."""

    id: Key
    version: int = Field(ge=1)
    name: Text
    aliases: list[Text] = Field(default_factory=list)
    styles: list[Key] = Field(min_length=1, description="Preferred styles, most fitting first.")
    medical_claims_allowed: bool = False
    zh: Scenery
    en: Scenery
    rules: list[Rule] = Field(default_factory=list)

    def scenery(self, language: Locale) -> Scenery:
        return self.zh if language is Locale.ZH_CN else self.en


class Negative(_Data):
    """The negative prompt per language (must fit the text encoder's token limit, checked at load)."""

    zh: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    en: Annotated[str, StringConstraints(min_length=1, max_length=2000)]

    def get(self, language: Locale) -> str:
        return self.zh if language is Locale.ZH_CN else self.en


class Frame(Bilingual):
    """A sentence frame with ``{placeholders}``."""


class Common(_Data):
    version: int = Field(ge=1)
    negative: Negative
    subject: Frame
    foreign_subject: Frame
    noun_subject: Frame
    details: Frame
    image_hint: Bilingual
    channels: dict[Literal["detail", "feed"], Bilingual]
    quality: Bilingual

    @model_validator(mode="after")
    def _frames_have_placeholders(self) -> Common:
        needs = {"subject": ("{title}",), "foreign_subject": ("{title}", "{noun}"), "noun_subject": ("{noun}",),
                 "details": ("{details}",)}
        for name, marks in needs.items():
            frame: Frame = getattr(self, name)
            for text in (frame.zh, frame.en):
                missing = [m for m in marks if m not in text]
                if missing:
                    raise ValueError(f"frame {name} {text!r} lacks {missing}")
        return self


class AttributeRole(_Data):
    """Attribute keys that mean one visual property, and how to say its value (``{value}``)."""

    keys: list[Text] = Field(min_length=1)
    zh: Text
    en: Text


class Attributes(_Data):
    version: int = Field(ge=1)
    roles: dict[Key, AttributeRole]
    values_en: dict[Text, Text] = Field(description="Chinese attribute words → English, for en-US prompts.")


class Vague(_Data):
    version: int = Field(ge=1)
    vague: list[Text] = Field(min_length=1)
    filler: list[Text] = Field(default_factory=list)


class TitleNoise(_Data):
    version: int = Field(ge=1)
    terms: list[Text] = Field(default_factory=list)
    patterns: list[Text] = Field(default_factory=list, description="Regular expressions on the lower-cased text.")

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from exc
        return patterns


class CommonRules(_Data):
    version: int = Field(ge=1)
    description: str = ""
    rules: list[Rule] = Field(default_factory=list)


class Styles(_Data):
    version: int = Field(ge=1)
    styles: dict[Key, Style] = Field(min_length=1)


class Library(_Data):
    """All prompt data, validated and cross-checked (a generic template exists, preferred styles exist)."""

    common: Common
    styles: dict[str, Style]
    templates: dict[str, Template]
    rules: list[Rule]
    attributes: Attributes
    vague: Vague
    title_noise: TitleNoise

    @model_validator(mode="after")
    def _cross_check(self) -> Library:
        if GENERIC_TEMPLATE not in self.templates:
            raise ValueError(f"templates lack the fallback template {GENERIC_TEMPLATE!r}")
        for template in self.templates.values():
            unknown = [s for s in template.styles if s not in self.styles]
            if unknown:
                raise ValueError(f"template {template.id!r} prefers unknown styles {unknown}")
        return self

    def fixed_phrases(self) -> set[str]:
        """Every phrase that goes into prompts unchanged (their token estimates can be computed once)."""
        phrases: set[str] = set()
        bilingual: list[Bilingual | Rule] = [*self.styles.values(), *self.rules, self.common.image_hint,
                                             self.common.quality, *self.common.channels.values()]
        for template in self.templates.values():
            bilingual += template.rules
            for scenery in (template.zh, template.en):
                phrases.update(scenery.scenes, scenery.cameras, scenery.lighting)
        for item in bilingual:
            phrases.update((item.zh, item.en))
        return phrases


D = TypeVar("D", bound=_Data)


def _read(path: Path, model: type[D]) -> D:
    try:
        return model.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError as exc:
        raise LibraryError(f"prompt data file {path} is missing") from exc
    except (json.JSONDecodeError, ValidationError) as exc:
        raise LibraryError(f"prompt data file {path} is invalid: {exc}") from exc


def load_library(data_dir: Path = DEFAULT_DATA_DIR) -> Library:
    """Read and validate every prompt data file under ``data_dir`` (raises LibraryError)."""
    templates: dict[str, Template] = {}
    for path in sorted((data_dir / "templates").glob("*.json")):
        template = _read(path, Template)
        if template.id != path.stem:
            raise LibraryError(f"template file {path} holds id {template.id!r}; name it {template.id}.json")
        templates[template.id] = template
    try:
        return Library(
            common=_read(data_dir / "common.json", Common),
            styles=_read(data_dir / "styles.json", Styles).styles,
            templates=templates,
            rules=_read(data_dir / "rules.json", CommonRules).rules,
            attributes=_read(data_dir / "attributes.json", Attributes),
            vague=_read(data_dir / "vague.json", Vague),
            title_noise=_read(data_dir / "title_noise.json", TitleNoise),
        )
    except ValidationError as exc:
        raise LibraryError(f"prompt data under {data_dir} is inconsistent: {exc}") from exc
