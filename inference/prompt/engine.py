"""The prompt engine: product snapshot + variant spec → typed ``Prompt``, safety gate first.

Stages of ``build`` (all in memory; data files are read once by ``load``):

1. resolve the style (ContentRefused INVALID_PARAMS when unknown), the template and the language (the
   variant's region, else the product's locale — never the title's language);
2. screen every product text and the promo copy through the safety gate (ContentRefused UNSAFE_CONTENT);
3. clean the title and selling points; nothing usable left → ContentRefused EMPTY_CONTENT;
4. turn selling points and attributes into visual phrases, add scene, camera, lighting and style words;
5. fit the phrases into the text encoder's token budget, least important dropped first;
6. promo copy becomes an overlay caption (never prompt text); hash everything.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import orjson

from inference.prompt.compose import MANDATORY, Phrase, Section, assemble
from inference.prompt.errors import ContentRefused
from inference.prompt.library import DEFAULT_DATA_DIR, Library, LibraryError, Template, load_library
from inference.prompt.safety import AbsolutePolicy, SafetyGate, SafetyVerdict, Screening
from inference.prompt.selection import Selector, pick, stable_int
from inference.prompt.text import has_cjk, strip_invisible
from inference.prompt.tokens import PROMPT_TOKEN_BUDGET, estimate_tokens
from inference.prompt.variants import VariantSpec, make_variants
from inference.prompt.visuals import Visualiser
from schemas.events import Locale, OverlayCaption, ProductSnapshot, PromoStarted, Prompt, Reason

OVERLAY_MAX_CHARS = 60
_FIXED_FIELDS = ("title", "brand", "category", "promo copy")  # screened first, in this order
_COPY = _FIXED_FIELDS.index("promo copy")

# Priorities (see compose.assemble): higher survives longer when the token budget is tight.
P_STYLE, P_IMAGE, P_ACTION, P_DETAILS, P_SCENE, P_CAMERA = 95, 90, 80, 76, 70, 68
P_CHANNEL, P_LIGHTING, P_RAW, P_ATTRIBUTE, P_QUALITY = 60, 55, 50, 40, 10


class PromptEngine:
    """Builds prompts for product variants. Immutable after ``load``; safe to share between threads."""

    def __init__(self, library: Library, gate: SafetyGate) -> None:
        self.library = library
        self.gate = gate
        self.selector = Selector(library)
        self.visuals = Visualiser(library)
        self._known_tokens = {text: estimate_tokens(text) for text in library.fixed_phrases()}
        for language in Locale:
            negative = library.common.negative.get(language)
            if estimate_tokens(negative) > PROMPT_TOKEN_BUDGET:
                raise LibraryError(f"negative prompt for {language} exceeds {PROMPT_TOKEN_BUDGET} tokens")

    @classmethod
    def load(cls, absolute_terms_policy: AbsolutePolicy = "drop", data_dir: Path | None = None) -> PromptEngine:
        """Read and compile all data files under ``data_dir`` (default: the packaged data) once."""
        directory = data_dir or DEFAULT_DATA_DIR
        return cls(load_library(directory), SafetyGate.load(absolute_terms_policy, directory))

    def check(self, text: str) -> SafetyVerdict:
        """The safety gate alone on one text."""
        return self.gate.check(text)

    def template_for(self, category: str) -> Template:
        """The template a free-text category maps to (generic when unknown)."""
        return self.selector.template_for(category)

    def variants(self, product: ProductSnapshot, count: int = 1,
                 promo: PromoStarted | None = None) -> list[VariantSpec]:
        """``count`` deterministic variants (see ``variants.make_variants``)."""
        return make_variants(self.selector, product, count, promo)

    def build(self, product: ProductSnapshot, variant: VariantSpec, clip_duration_s: float = 5.0) -> Prompt:
        """The prompt for one variant of a product.

        ``clip_duration_s`` (seconds, > 0) sets the overlay's end time. Raises ContentRefused (reason
        UNSAFE_CONTENT, EMPTY_CONTENT or INVALID_PARAMS) and ValueError for a bad ``clip_duration_s``.
        """
        if not (math.isfinite(clip_duration_s) and clip_duration_s > 0):
            raise ValueError(f"clip_duration_s must be a positive number of seconds, not {clip_duration_s!r}")
        style = self.selector.style(variant.style)
        template = self.selector.template_for(product.category)
        language = variant.region or product.locale
        promo = variant.promo
        screened = self._screen(product, promo, template)
        title, points, attributes, copy = self._split(product, promo, screened)
        if not title and not points:
            raise ContentRefused(Reason.EMPTY_CONTENT, "empty",
                                 f"product {product.sku}: no usable title or selling points after cleaning "
                                 f"(title {product.title!r})")
        seed = stable_int(product.sku, variant.variant_id)
        scenery = template.scenery(language)
        common = self.library.common
        phrases = [
            self._phrase(style.get(language), P_STYLE, Section.OPENING),
            self._phrase(self._subject(title, scenery.noun, language), MANDATORY, Section.OPENING),
        ]
        if product.image_url:
            phrases.append(self._phrase(common.image_hint.get(language), P_IMAGE, Section.GUIDANCE))
        phrases.append(self._phrase(common.channels[variant.channel].get(language), P_CHANNEL, Section.GUIDANCE))
        phrases += self._content_phrases(points, attributes, template, language)
        phrases += [
            self._phrase(pick(scenery.scenes, seed, 0), P_SCENE, Section.SETTING),
            self._phrase(pick(scenery.cameras, seed, 1), P_CAMERA, Section.CAMERA),
            self._phrase(pick(scenery.lighting, seed, 2), P_LIGHTING, Section.CAMERA),
            self._phrase(common.quality.get(language), P_QUALITY, Section.CAMERA),
        ]
        overlays = self._overlays(promo, copy, clip_duration_s)
        return _hashed(
            positive=assemble(phrases, language),
            negative=common.negative.get(language),
            language=language,
            template=template,
            overlays=overlays,
        )

    def _phrase(self, text: str, priority: int, section: Section) -> Phrase:
        return Phrase.of(text, priority, section, self._known_tokens)

    def _screen(self, product: ProductSnapshot, promo: PromoStarted | None, template: Template) -> Screening:
        texts = [product.title, product.brand or "", product.category, promo.copy_text if promo else "",
                 *product.selling_points, *product.attributes.keys(), *product.attributes.values()]
        result = self.gate.screen(texts, medical_allowed=template.medical_claims_allowed)
        if result.refusal is not None:
            assert result.refused_index is not None
            label = _field_label(product, result.refused_index)
            hit = result.refusal
            raise ContentRefused(Reason.UNSAFE_CONTENT, hit.rule,
                                 f"product {product.sku}: {label} {texts[result.refused_index]!r} matches "
                                 f"{hit.term!r} on the {hit.list_id} list ({hit.description})")
        return result

    def _split(self, product: ProductSnapshot, promo: PromoStarted | None,
               screened: Screening) -> tuple[str, list[str], list[tuple[str, str]], str]:
        """Cleaned title, selling points, attributes and promo copy from the screened texts."""
        cleaned = screened.cleaned
        n_points, n_attrs = len(product.selling_points), len(product.attributes)
        first_point = len(_FIXED_FIELDS)
        first_key = first_point + n_points
        copy = cleaned[_COPY]
        title = self.visuals.clean_title(_without(cleaned[0], copy))
        points = [self.visuals.clean_point(_without(p, copy)) for p in cleaned[first_point:first_key]]
        keys, values = cleaned[first_key:first_key + n_attrs], cleaned[first_key + n_attrs:]
        if promo is not None and _COPY not in screened.cut_indexes:
            copy = strip_invisible(promo.copy_text)  # nothing dropped: shown to shoppers as written
        return title, [p for p in points if p], list(zip(keys, values, strict=True)), copy

    def _subject(self, title: str, noun: str, language: Locale) -> str:
        common = self.library.common
        if not title:
            return common.noun_subject.get(language).format(noun=noun)
        foreign = has_cjk(title) != (language is Locale.ZH_CN)
        frame = common.foreign_subject if foreign else common.subject
        return frame.get(language).format(title=title, noun=noun)

    def _content_phrases(self, points: list[str], attributes: list[tuple[str, str]], template: Template,
                         language: Locale) -> list[Phrase]:
        selling = self.visuals.selling_visuals(points, template, language)
        attribute_phrases = self.visuals.attribute_phrases(attributes, language)
        phrases = [self._phrase(a, P_ACTION - i, Section.ACTIONS) for i, a in enumerate(selling.actions)]
        if selling.wants_details and attribute_phrases:
            joiner = "、" if language is Locale.ZH_CN else ", "
            details = self.library.common.details.get(language).format(details=joiner.join(attribute_phrases))
            phrases.append(self._phrase(details, P_DETAILS, Section.ACTIONS))
        else:
            phrases += [self._phrase(a, P_ATTRIBUTE - i, Section.SETTING) for i, a in enumerate(attribute_phrases)]
        phrases += [self._phrase(r, P_RAW - i, Section.ACTIONS) for i, r in enumerate(selling.raw)]
        return phrases

    @staticmethod
    def _overlays(promo: PromoStarted | None, copy: str, clip_duration_s: float) -> list[OverlayCaption]:
        if promo is None or not copy:
            return []
        return [OverlayCaption(text=copy[:OVERLAY_MAX_CHARS], start_s=0.0, end_s=clip_duration_s,
                               promo_id=promo.promo_id, valid_from=promo.starts_at, valid_until=promo.ends_at)]


def _without(text: str, copy: str) -> str:
    """``text`` with the promo copy cut out, so a title that repeats it cannot leak it into the prompt."""
    return text.replace(copy, " ") if copy and copy in text else text


def _field_label(product: ProductSnapshot, index: int) -> str:
    if index < len(_FIXED_FIELDS):
        return _FIXED_FIELDS[index]
    index -= len(_FIXED_FIELDS)
    if index < len(product.selling_points):
        return f"selling point {index + 1}"
    index -= len(product.selling_points)
    keys = list(product.attributes)
    return f"attribute key {keys[index]!r}" if index < len(keys) else f"attribute {keys[index - len(keys)]!r}"


def prompt_hash(positive: str, negative: str, language: Locale, template_id: str, template_version: int,
                overlays: list[OverlayCaption]) -> str:
    """SHA-256 of the canonical JSON of every Prompt field but the hash (template version included)."""
    doc = {
        "positive": positive, "negative": negative, "language": language.value, "template_id": template_id,
        "template_version": template_version, "overlays": [o.model_dump(mode="json") for o in overlays],
    }
    return hashlib.sha256(_canonical_json(doc)).hexdigest()


def _canonical_json(doc: dict) -> bytes:
    """``json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"))`` in UTF-8 (surrogates
    passed through): the hashed form. orjson writes the same bytes several times faster, except for floats below
    1e-4 or from 1e16 (exponent spelling) and lone surrogates (refused), which take the ``json`` path."""
    if all(_orjson_float(v) for overlay in doc["overlays"] for v in overlay.values() if isinstance(v, float)):
        try:
            return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            pass
    canonical = json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return canonical.encode("utf-8", "surrogatepass")


def _orjson_float(value: float) -> bool:
    return value == 0 or 1e-4 <= abs(value) < 1e16


def _hashed(*, positive: str, negative: str, language: Locale, template: Template,
            overlays: list[OverlayCaption]) -> Prompt:
    digest = prompt_hash(positive, negative, language, template.id, template.version, overlays)
    return Prompt(positive=positive, negative=negative, language=language, template_id=template.id,
                  template_version=template.version, overlays=overlays, prompt_hash=digest)

