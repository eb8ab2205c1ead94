"""The prompt engine: product snapshot + variant spec → typed ``Prompt``, safety gate first.

Stages of ``build`` (all in memory; data files are read once by ``load``):

1. resolve the style (ContentRefused INVALID_PARAMS when unknown), the template and the language (the
   variant's region, else the product's locale — never the title's language);
2. screen every product text and the promo copy through the safety gate (ContentRefused UNSAFE_CONTENT);
3. clean the title and selling points; nothing usable left → ContentRefused EMPTY_CONTENT;
4. turn selling points and attributes into visual phrases, add scene, camera, lighting and style words;
5. fit the phrases into the text encoder's token budget, least important dropped first;
6. promo copy becomes an overlay caption (never prompt text); hash everything.

Stages 2–4 without the promo copy do not depend on the variant: ``analyse`` does them once per product and
language (``ProductAnalysis``), ``build_from`` does the rest for one variant, screening the promo copy on its
own, and gives what ``build`` gives (``inference.prompt.cache`` keeps analyses for a planner's fan-out).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson

from inference.prompt.compose import MANDATORY, Phrase, Section, assemble
from inference.prompt.errors import ContentRefused
from inference.prompt.library import DEFAULT_DATA_DIR, Library, LibraryError, Style, Template, load_library
from inference.prompt.safety import AbsolutePolicy, SafetyGate, SafetyVerdict, Screening
from inference.prompt.selection import Selector, pick, stable_int
from inference.prompt.text import has_cjk, strip_invisible, tidy
from inference.prompt.tokens import PROMPT_TOKEN_BUDGET, estimate_tokens
from inference.prompt.variants import VariantSpec, make_variants
from inference.prompt.visuals import Visualiser
from schemas.events import Locale, OverlayCaption, ProductSnapshot, PromoStarted, Prompt, Reason

OVERLAY_MAX_CHARS = 60
COPY_SCREENINGS = 256  # promo copies screened alone, remembered (a fan-out screens its copy once)
_FIXED_FIELDS = ("title", "brand", "category", "promo copy")  # screened first, in this order
_COPY = _FIXED_FIELDS.index("promo copy")

# Priorities (see compose.assemble): higher survives longer when the token budget is tight.
P_STYLE, P_IMAGE, P_ACTION, P_DETAILS, P_SCENE, P_CAMERA = 95, 90, 80, 76, 70, 68
P_CHANNEL, P_LIGHTING, P_RAW, P_ATTRIBUTE, P_QUALITY = 60, 55, 50, 40, 10


@dataclass(frozen=True, slots=True)
class ProductAnalysis:
    """What ``build`` makes of a product's own texts for prompts in ``language``, whatever the variant: the
    template, the subject phrase and the selling-point and attribute phrases (screened without promo copy).

    ``screened``: the title and selling points as screened, before cleaning (a promo copy found in one of them is
    cut out of it, so such a build does not reuse the analysis); ``cut``: terms were cut out of some text (then
    ``build``'s one screening of all texts tidies the promo copy too).
    """

    template: Template
    language: Locale
    subject: Phrase
    content: tuple[Phrase, ...]
    screened: tuple[str, ...]
    cut: bool


class PromptEngine:
    """Builds prompts for product variants. Immutable after ``load``; safe to share between threads.

    ``fingerprint`` is a digest of everything loaded (library, safety lists, policy): equal fingerprints build
    equal prompts, so it keys what is kept of this engine's work (``inference.prompt.cache``)."""

    def __init__(self, library: Library, gate: SafetyGate) -> None:
        self.library = library
        self.gate = gate
        self.fingerprint = hashlib.sha256(f"{library.model_dump_json()}|{gate.fingerprint}".encode()).hexdigest()
        self.selector = Selector(library)
        self.visuals = Visualiser(library)
        self._known_tokens = {text: estimate_tokens(text) for text in library.fixed_phrases()}
        self._fixed: dict[tuple[str, int, Section], Phrase] = {}  # library phrases as placed (a bounded set)
        self._screened_copy = functools.lru_cache(maxsize=COPY_SCREENINGS)(self._screen_copy)
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
        _check_duration(clip_duration_s)
        style = self.selector.style(variant.style)
        template = self.selector.template_for(product.category)
        promo = variant.promo
        screened = self._screen(product, promo, template)
        analysis, copy = self._analysed(product, template, variant.region or product.locale, screened, promo)
        return self._assemble(analysis, product, variant, style, self._overlays(promo, copy, clip_duration_s))

    def analyse(self, product: ProductSnapshot, language: Locale) -> ProductAnalysis | None:
        """The variant-independent part of building ``product``'s prompts in ``language``, for ``build_from``;
        None when the product's own texts are refused or empty (``build`` raises why)."""
        template = self.selector.template_for(product.category)
        try:
            return self._analysed(product, template, language, self._screen(product, None, template), None)[0]
        except ContentRefused:
            return None

    def build_from(self, analysis: ProductAnalysis, product: ProductSnapshot, variant: VariantSpec,
                   clip_duration_s: float = 5.0) -> Prompt:
        """``build(product, variant, clip_duration_s)`` from ``analysis = analyse(product, language)``, where
        ``language`` is the variant's (its region, else the product's locale): the same Prompt or ContentRefused.
        Only the promo copy is screened; a copy with listed terms, or found in the title or a selling point, goes
        through ``build``."""
        _check_duration(clip_duration_s)
        style = self.selector.style(variant.style)
        language = variant.region or product.locale
        if analysis.language is not language:
            raise ValueError(f"an analysis for {analysis.language.value} prompts cannot build {language.value} ones")
        copy = self._promo_copy(analysis, variant.promo)
        if copy is None:
            return self.build(product, variant, clip_duration_s)
        return self._assemble(analysis, product, variant, style, self._overlays(variant.promo, copy, clip_duration_s))

    def _analysed(self, product: ProductSnapshot, template: Template, language: Locale, screened: Screening,
                  promo: PromoStarted | None) -> tuple[ProductAnalysis, str]:
        """The analysis of ``product``'s screened texts, and the promo copy as the overlay shows it."""
        title, points, attributes, copy = self._split(product, promo, screened)
        if not title and not points:
            raise ContentRefused(Reason.EMPTY_CONTENT, "empty",
                                 f"product {product.sku}: no usable title or selling points after cleaning "
                                 f"(title {product.title!r})")
        subject = self._subject(title, template.scenery(language).noun, language)
        first_point = len(_FIXED_FIELDS)
        analysis = ProductAnalysis(
            template=template,
            language=language,
            subject=self._phrase(subject, MANDATORY, Section.OPENING),
            content=tuple(self._content_phrases(points, attributes, template, language)),
            screened=(screened.cleaned[0], *screened.cleaned[first_point:first_point + len(product.selling_points)]),
            cut=bool(screened.cut_indexes),
        )
        return analysis, copy

    def _promo_copy(self, analysis: ProductAnalysis, promo: PromoStarted | None) -> str | None:
        """The promo copy as ``build`` words it next to the analysed product ('' without a promo); None when only
        ``build`` can tell: the copy holds listed terms (refused, or cut out) or is found in the title or a
        selling point. The copy is screened as ``build`` screens it (a term never spans two texts)."""
        if promo is None:
            return ""
        screened = self._screened_copy(promo.copy_text, analysis.template.medical_claims_allowed)
        if screened.refusal is not None or screened.cut_indexes:
            return None
        copy = tidy(screened.cleaned[0]) if analysis.cut else screened.cleaned[0]
        if copy and any(copy in text for text in analysis.screened):
            return None
        return strip_invisible(promo.copy_text)

    def _screen_copy(self, copy_text: str, medical_allowed: bool) -> Screening:
        return self.gate.screen([copy_text], medical_allowed=medical_allowed)

    def _assemble(self, analysis: ProductAnalysis, product: ProductSnapshot, variant: VariantSpec, style: Style,
                  overlays: list[OverlayCaption]) -> Prompt:
        """The variant's phrases around the analysed product's, fitted to the budget and hashed."""
        language, template = analysis.language, analysis.template
        seed = stable_int(product.sku, variant.variant_id)
        scenery = template.scenery(language)
        common = self.library.common
        fixed = self._fixed_phrase
        phrases = [fixed(style.get(language), P_STYLE, Section.OPENING), analysis.subject]
        if product.image_url:
            phrases.append(fixed(common.image_hint.get(language), P_IMAGE, Section.GUIDANCE))
        phrases.append(fixed(common.channels[variant.channel].get(language), P_CHANNEL, Section.GUIDANCE))
        phrases += analysis.content
        phrases += [
            fixed(pick(scenery.scenes, seed, 0), P_SCENE, Section.SETTING),
            fixed(pick(scenery.cameras, seed, 1), P_CAMERA, Section.CAMERA),
            fixed(pick(scenery.lighting, seed, 2), P_LIGHTING, Section.CAMERA),
            fixed(common.quality.get(language), P_QUALITY, Section.CAMERA),
        ]
        return _hashed(
            positive=assemble(phrases, language),
            negative=common.negative.get(language),
            language=language,
            template=template,
            overlays=overlays,
        )

    def _phrase(self, text: str, priority: int, section: Section) -> Phrase:
        return Phrase.of(text, priority, section, self._known_tokens)

    def _fixed_phrase(self, text: str, priority: int, section: Section) -> Phrase:
        """A library text as a phrase, made once (library texts are a fixed set, so this stays bounded)."""
        key = (text, priority, section)
        phrase = self._fixed.get(key)
        if phrase is None:
            phrase = self._fixed[key] = self._phrase(text, priority, section)
        return phrase

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
        starts, ends = promo.starts_at, promo.ends_at
        return list(_captions(copy[:OVERLAY_MAX_CHARS], clip_duration_s, promo.promo_id, starts, ends,
                              (_offset(starts), _offset(ends))))


def _offset(moment: datetime | None) -> object:
    return None if moment is None else moment.utcoffset()


@functools.lru_cache(maxsize=COPY_SCREENINGS)
def _captions(text: str, clip_duration_s: float, promo_id: str, valid_from: datetime | None,
              valid_until: datetime | None, offsets: tuple) -> tuple[OverlayCaption, ...]:
    """A promo's overlay (the same for every product a fan-out plans it for: validated once). ``offsets`` are
    part of the key: equal instants written with other UTC offsets are equal datetimes, but other JSON (and so
    another prompt hash), and a hash must never depend on which promo came first."""
    return (OverlayCaption(text=text, start_s=0.0, end_s=clip_duration_s, promo_id=promo_id, valid_from=valid_from,
                           valid_until=valid_until),)


def _check_duration(clip_duration_s: float) -> None:
    if not (math.isfinite(clip_duration_s) and clip_duration_s > 0):
        raise ValueError(f"clip_duration_s must be a positive number of seconds, not {clip_duration_s!r}")


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
        "template_version": template_version, "overlays": [_overlay_doc(o) for o in overlays],
    }
    head = _hashed_head(language.value, negative) if _orjson_safe(doc["overlays"]) else None
    if head is not None:
        rest = {k: doc[k] for k in ("overlays", "positive", "template_id", "template_version")}
        try:
            tail = orjson.dumps(rest, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            pass
        else:  # '{"language":…,"negative":…,' is hashed once per language and negative prompt
            digest = head.copy()
            digest.update(memoryview(tail)[1:])
            return digest.hexdigest()
    return hashlib.sha256(_canonical_json(doc)).hexdigest()


_overlay_docs: dict[int, tuple[OverlayCaption, dict]] = {}


def _overlay_doc(overlay: OverlayCaption) -> dict:
    """The JSON form of an overlay, kept per overlay object (a fan-out's requests share their promo's: see
    ``_captions``); callers must not change it. By identity, not equality: equal overlays may be written
    differently (UTC offsets). The entry holds its overlay, so an id is never reused while kept."""
    kept = _overlay_docs.get(id(overlay))
    if kept is not None and kept[0] is overlay:
        return kept[1]
    if len(_overlay_docs) >= COPY_SCREENINGS:
        _overlay_docs.clear()
    doc = overlay.model_dump(mode="json")
    _overlay_docs[id(overlay)] = (overlay, doc)
    return doc


@functools.lru_cache(maxsize=16)
def _hashed_head(language: str, negative: str):
    """SHA-256 state after the canonical JSON's first two members (its keys sort first); None when only the
    ``json`` path writes them (a lone surrogate)."""
    try:
        head = orjson.dumps({"language": language, "negative": negative}, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return None
    return hashlib.sha256(memoryview(head)[:-1].tobytes() + b",")


def _canonical_json(doc: dict) -> bytes:
    """``json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"))`` in UTF-8 (surrogates
    passed through): the hashed form. orjson writes the same bytes several times faster, except for floats below
    1e-4 or from 1e16 (exponent spelling) and lone surrogates (refused), which take the ``json`` path."""
    if _orjson_safe(doc["overlays"]):
        try:
            return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            pass
    canonical = json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return canonical.encode("utf-8", "surrogatepass")


def _orjson_safe(overlays: list[dict]) -> bool:
    """Whether orjson spells every float of ``overlays`` as ``json`` does."""
    return all(_orjson_float(v) for overlay in overlays for v in overlay.values() if isinstance(v, float))


def _orjson_float(value: float) -> bool:
    return value == 0 or 1e-4 <= abs(value) < 1e16


def _hashed(*, positive: str, negative: str, language: Locale, template: Template,
            overlays: list[OverlayCaption]) -> Prompt:
    digest = prompt_hash(positive, negative, language, template.id, template.version, overlays)
    return Prompt(positive=positive, negative=negative, language=language, template_id=template.id,
                  template_version=template.version, overlays=overlays, prompt_hash=digest)
