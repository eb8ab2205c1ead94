"""Property tests: any product text gives a prompt within the token budget, or ContentRefused; always the
same prompt for the same input."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference.prompt import PROMPT_TOKEN_BUDGET, ContentRefused, PromptEngine, VariantSpec, estimate_tokens
from inference.prompt.text import MASK, squash, tidy
from inference.prompt.tokens import _PIECES, _piece_cost, truncate_to_tokens
from inference.prompt.engine import prompt_hash
from schemas.events import Locale, OverlayCaption, ProductSnapshot, PromoStarted, Prompt

ENGINE = PromptEngine.load()
STRICT = PromptEngine.load(absolute_terms_policy="refuse")
STYLES = sorted(ENGINE.library.styles)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that mixes scripts, full-width forms, zero-width characters, the join mask and listed terms.
pieces = st.sampled_from([
    "降噪", "耳机", "续航30小时", "好看的设计", "最佳", "全网第一", "best", "ｇｕｎ", "\u200b", MASK, "【包邮】", "5折",
    "😀", "é", "ﷺ", "\u0301", " ", "，", "Ⅻ", "\x00", "PBT键帽", "曜石黑",
])
texty = st.one_of(st.text(max_size=80), st.lists(pieces, max_size=12).map("".join))


def bounded(max_len: int) -> st.SearchStrategy[str]:
    return st.one_of(texty, st.text(min_size=max_len - 5, max_size=max_len)).map(lambda s: s[:max_len])


products = st.builds(
    ProductSnapshot,
    sku=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
    title=bounded(300),
    category=st.one_of(st.sampled_from(["3c", "美妆", "kitchen", "手机", "礼品"]), bounded(64).filter(bool)),
    selling_points=st.lists(bounded(500), max_size=30),
    attributes=st.dictionaries(bounded(64), bounded(500), max_size=12),
    brand=st.one_of(st.none(), bounded(100)),
    locale=st.sampled_from(list(Locale)),
    image_url=st.one_of(st.none(), st.just("file:tests/data/images/x.png")),
)
variants = st.builds(
    VariantSpec,
    variant_id=st.sampled_from(["daily-a", "daily-b", "promo-P-1-a"]),
    style=st.sampled_from(STYLES),
    channel=st.sampled_from(["detail", "feed"]),
    region=st.one_of(st.none(), st.sampled_from(list(Locale))),
)


def build_or_refuse(engine: PromptEngine, product: ProductSnapshot, variant: VariantSpec) -> Prompt | ContentRefused:
    try:
        return engine.build(product, variant)
    except ContentRefused as exc:
        return exc


@PROPERTY
@given(product=products, variant=variants)
def test_any_product_gives_a_bounded_deterministic_prompt_or_a_refusal(product: ProductSnapshot,
                                                                       variant: VariantSpec) -> None:
    for engine in (ENGINE, STRICT):
        first = build_or_refuse(engine, product, variant)
        second = build_or_refuse(engine, product, variant)
        if isinstance(first, ContentRefused):
            assert isinstance(second, ContentRefused)
            assert (first.reason, first.rule, first.message) == (second.reason, second.rule, second.message)
            continue
        assert first == second
        assert estimate_tokens(first.positive) <= PROMPT_TOKEN_BUDGET
        assert first.language is (variant.region or product.locale)
        assert MASK not in first.positive and "\u200b" not in first.positive


@PROPERTY
@given(title=st.text(min_size=250, max_size=300), points=st.lists(st.text(min_size=60, max_size=500), min_size=20,
                                                                  max_size=30, unique=True),
       locale=st.sampled_from(list(Locale)))
def test_oversized_products_are_cut_to_the_budget(title: str, points: list[str], locale: Locale) -> None:
    product = ProductSnapshot(sku="SKU-BIG", title=title, category="3c", selling_points=points, locale=locale,
                              attributes={"颜色": "曜石黑" * 100, "material": "aluminum " * 50})
    result = build_or_refuse(ENGINE, product, VariantSpec(variant_id="daily-a", style="tech"))
    if isinstance(result, ContentRefused):
        return
    assert estimate_tokens(result.positive) <= PROMPT_TOKEN_BUDGET
    assert len(result.positive) <= 4000


@PROPERTY
@given(product=products, promo_copy=bounded(60).filter(lambda s: s.strip()))
def test_promo_copy_never_reaches_the_prompt(product: ProductSnapshot, promo_copy: str) -> None:
    promo = PromoStarted(event_id="e", occurred_at="2025-11-10T00:00:00+08:00", promo_id="P-1", copy_text=promo_copy,
                         starts_at="2025-11-11T00:00:00+08:00", ends_at="2025-11-12T00:00:00+08:00")
    variant = VariantSpec(variant_id="promo-P-1-a", style="festive", promo=promo)
    result = build_or_refuse(ENGINE, product, variant)
    if isinstance(result, ContentRefused):
        return
    for overlay in result.overlays:
        assert 1 <= len(overlay.text) <= 60 and overlay.promo_id == "P-1"
        if len(overlay.text) >= 4:
            assert overlay.text not in result.positive


@PROPERTY
@given(before=st.text(max_size=40), after=st.text(max_size=40))
def test_listed_terms_are_found_anywhere(before: str, after: str) -> None:
    assert ENGINE.check(before + "毒品" + after).rule == "drugs:毒品"
    assert not ENGINE.check(f"{before} cocaine {after}").allowed


@PROPERTY
@given(text=st.text(max_size=200))
def test_estimate_is_additive_over_pieces(text: str) -> None:
    assert estimate_tokens(text) == sum(_piece_cost(m) for m in _PIECES.finditer(text))


@PROPERTY
@given(text=st.text(max_size=300), budget=st.integers(min_value=0, max_value=120))
def test_truncation_fits_and_is_a_prefix(text: str, budget: int) -> None:
    cut = truncate_to_tokens(text, budget)
    assert estimate_tokens(cut) <= budget
    assert text.startswith(cut)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("", 0), ("中", 1), ("hello world", 4), ("续航30小时", 6), ("😀", 4), ("é", 2), ("，。", 2),
     ("supercalifragilistic", 5), ("Ｐｒｏ", 3), ("a\u3000b", 5)],
)
def test_estimate_examples(text: str, tokens: int) -> None:
    assert estimate_tokens(text) == tokens


_JUNK = r"\s,.;:!?，。；：！？、\-–—/|·~_*+&"
_TIDY_EDGES = re.compile(f"^[{_JUNK}的]+|[{_JUNK}]+$")
_TIDY_BEFORE_CLOSING = re.compile(r"\s+([,.;:!?，。；：！？、）)】\]])")
_ANY_CHARACTER = st.characters(exclude_categories=())  # lone surrogates too
_TIDY_ALPHABET = st.sampled_from(list(" ,.;:!?，。；：！？、-–—/|·~_*+&的）)】][ab\n\t\u3000x中\u00a0\u2028"))


@PROPERTY
@given(text=st.lists(_TIDY_ALPHABET, max_size=14).map("".join) | st.text(max_size=30))
def test_tidy_is_its_regex_definition(text: str) -> None:
    """``tidy`` strips with ``str`` methods what these two regexes remove from the squashed text."""
    assert tidy(text) == _TIDY_EDGES.sub("", _TIDY_BEFORE_CLOSING.sub(r"\1", squash(text)))


@PROPERTY
@given(positive=st.text(_ANY_CHARACTER, min_size=1, max_size=40), negative=st.text(_ANY_CHARACTER, max_size=40),
       overlay_text=st.text(min_size=1, max_size=20), end_s=st.floats(min_value=1e-9, max_value=1e20),
       language=st.sampled_from(Locale))
def test_prompt_hash_is_the_sha256_of_the_canonical_json(positive: str, negative: str, overlay_text: str,
                                                         end_s: float, language: Locale) -> None:
    """The hashed bytes are ``json.dumps(sort_keys, no spaces, UTF-8)``, however the hash is taken in parts (lone
    surrogates and exponent-spelt floats included)."""
    for overlays in ([], [OverlayCaption(text=overlay_text, start_s=0.0, end_s=end_s, promo_id="P-1")]):
        doc = {"positive": positive, "negative": negative, "language": language.value, "template_id": "3c",
               "template_version": 2, "overlays": [o.model_dump(mode="json") for o in overlays]}
        canonical = json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        expected = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
        assert prompt_hash(positive, negative, language, "3c", 2, overlays) == expected
