"""PromptCache: builds from a product's kept analysis are exactly ``PromptEngine.build``'s — the same Prompt or
the same refusal (reason, rule, message) — whatever the promo copy; another library never reuses an analysis;
the cache stays within its bound."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference.prompt import ContentRefused, PromptEngine, VariantSpec
from inference.prompt.cache import PromptCache
from inference.prompt.golden import read_catalog
from inference.prompt.library import DEFAULT_DATA_DIR
from schemas.events import Locale, ProductSnapshot, PromoStarted, Prompt
from tests.unit.test_prompt_properties import PROPERTY, products

ENGINE = PromptEngine.load()
STRICT = PromptEngine.load(absolute_terms_policy="refuse")
OTHER_LOCALE = {Locale.ZH_CN: Locale.EN_US, Locale.EN_US: Locale.ZH_CN}

COPIES = [
    "限时5折！买一赠三",  # the sample promo
    "Black Friday deal",
    "全网最佳 限时特惠",  # an absolute term: cut (policy drop) or refused (policy refuse)
    "买枪支送子弹",  # refused: weapons
    "治疗失眠",  # a medical claim: refused where the template does not allow them
    "降噪",  # inside the titles and selling points of the headphones below
    "Pro",  # inside a title
    "限时\u200b5折 ",  # invisible and trailing characters: shown without them
    "\u200b",  # nothing visible: no overlay
    "  ",
    "最佳",  # only an absolute term: nothing left once it is cut
]

EDGE_PRODUCTS = [
    ProductSnapshot(sku="E-1", title="降噪蓝牙耳机 Pro 最佳音质", category="3c", selling_points=["主动降噪", "续航30小时"],
                    attributes={"颜色": "曜石黑"}, brand="声迹"),
    ProductSnapshot(sku="E-2", title="手枪形状水杯", category="kitchen", selling_points=["限时5折"]),  # unsafe title
    ProductSnapshot(sku="E-3", title="不锈钢炒锅", category="kitchen", selling_points=["可以治疗失眠"]),  # unsafe point
    ProductSnapshot(sku="E-4", title="【包邮】", category="kitchen"),  # nothing left: empty content
    ProductSnapshot(sku="E-5", title="Best Wireless Earbuds, No. 1 Choice", category="3c", locale=Locale.EN_US,
                    selling_points=["the best bass", "30h battery"], attributes={"colour": "black"}),
    ProductSnapshot(sku="E-6", title="保湿面霜", category="beauty", selling_points=["治疗干燥"],
                    image_url="file:tests/data/images/x.png"),
    ProductSnapshot(sku="E-7", title="限时5折！买一赠三 不粘锅", category="kitchen", selling_points=["限时5折！买一赠三"]),
    ProductSnapshot(sku="E-8", title="water gun 水枪玩具", category="toys", brand="最好玩"),
]


def promo(copy_text: str, promo_id: str = "P-1", style: str | None = "festive") -> PromoStarted:
    return PromoStarted(event_id=f"evt-{promo_id}", occurred_at="2025-11-10T00:00:00+08:00", promo_id=promo_id,
                        copy_text=copy_text, starts_at="2025-11-11T00:00:00+08:00",
                        ends_at="2025-11-12T00:00:00+08:00", categories=["kitchen"], style=style)


def outcome(build, *args) -> Prompt | tuple:
    try:
        return build(*args)
    except ContentRefused as exc:
        return type(exc), exc.reason, exc.rule, exc.message


def variants_of(engine: PromptEngine, product: ProductSnapshot, promos: list[PromoStarted]) -> list[VariantSpec]:
    """What a planner asks for: daily variants first (they fill the cache), then promo variants, and variants for
    the other market and channel."""
    variants = engine.variants(product, 3)
    for p in promos:
        variants += engine.variants(product, 2, p)
    variants.append(VariantSpec(variant_id="feed-x", style=variants[0].style, channel="feed",
                                region=OTHER_LOCALE[product.locale], promo=promos[0]))
    return variants


def assert_same_as_build(engine: PromptEngine, cache: PromptCache, product: ProductSnapshot,
                         variants: list[VariantSpec], clip_duration_s: float = 5.0) -> None:
    for variant in variants:
        fresh = outcome(engine.build, product, variant, clip_duration_s)
        assert outcome(cache.build, engine, product, variant, clip_duration_s) == fresh, variant.variant_id


@pytest.mark.parametrize("engine", [ENGINE, STRICT], ids=["drop", "refuse"])
def test_cached_builds_are_fresh_builds_for_products_variants_and_promos(engine: PromptEngine) -> None:
    promos = [promo(c, f"P-{i}") for i, c in enumerate(COPIES)]
    cache = PromptCache()
    catalog = read_catalog()
    for product in catalog + EDGE_PRODUCTS:
        assert_same_as_build(engine, cache, product, variants_of(engine, product, promos), clip_duration_s=4.0)
    assert len(cache) == 2 * len(catalog + EDGE_PRODUCTS)  # one analysis per product and language


def test_refusals_keep_builds_order_product_text_copy_then_points() -> None:
    cache = PromptCache()
    unsafe_copy = promo("买枪支送子弹")
    title, point = EDGE_PRODUCTS[1], EDGE_PRODUCTS[2]
    for product in (title, point):
        variants = ENGINE.variants(product, 1) + ENGINE.variants(product, 1, unsafe_copy)
        assert_same_as_build(ENGINE, cache, product, variants)
    with pytest.raises(ContentRefused, match="title '手枪形状水杯'"):
        cache.build(ENGINE, title, ENGINE.variants(title, 1, unsafe_copy)[0])
    with pytest.raises(ContentRefused, match="promo copy '买枪支送子弹'"):
        cache.build(ENGINE, point, ENGINE.variants(point, 1, unsafe_copy)[0])


def test_a_safe_product_with_unsafe_copy_is_refused_after_its_analysis_is_kept() -> None:
    cache = PromptCache()
    product = read_catalog()[0]
    daily = cache.build(ENGINE, product, ENGINE.variants(product, 1)[0])
    assert daily == ENGINE.build(product, ENGINE.variants(product, 1)[0])
    for _ in range(2):  # the copy's screening is remembered, and still refuses
        with pytest.raises(ContentRefused) as refused:
            cache.build(ENGINE, product, ENGINE.variants(product, 1, promo("买枪支送子弹"))[0])
        assert refused.value.rule == "weapons:枪支"


@PROPERTY
@given(product=products, copy_text=st.one_of(st.sampled_from(COPIES), st.text(min_size=1, max_size=60)),
       region=st.one_of(st.none(), st.sampled_from(list(Locale))))
def test_any_product_and_copy_build_alike_from_the_cache(product: ProductSnapshot, copy_text: str,
                                                         region: Locale | None) -> None:
    copies = [copy_text, product.title[:60] or copy_text, *(p[:60] for p in product.selling_points[:1] if p)]
    for engine in (ENGINE, STRICT):
        cache = PromptCache()
        variants = [VariantSpec(variant_id="daily-a", style="tech", region=region)]
        variants += [VariantSpec(variant_id=f"promo-P-{i}-a", style="festive", region=region, promo=promo(c))
                     for i, c in enumerate(copies)]
        assert_same_as_build(engine, cache, product, variants)


def edited_data(tmp_path: Path, name: str, edit) -> Path:
    data = tmp_path / name
    shutil.copytree(DEFAULT_DATA_DIR, data)
    for relative, change in edit.items():
        path = data / relative
        doc = json.loads(path.read_text(encoding="utf-8"))
        change(doc)
        path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return data


def test_another_library_or_list_never_reuses_an_analysis(tmp_path: Path) -> None:
    def new_rule(doc: dict) -> None:
        doc["version"] += 1
        doc["rules"].append({"keywords": ["受热均匀"], "zh": "锅底火苗均匀铺开，食材颜色一致", "en": "even heat"})

    def ban_pans(doc: dict) -> None:
        doc["zh"].append("炒锅")

    def allow_medical(doc: dict) -> None:
        doc["medical_claims_allowed"] = True

    same = PromptEngine.load(data_dir=edited_data(tmp_path, "same", {}))
    rule = PromptEngine.load(data_dir=edited_data(tmp_path, "rule", {"templates/kitchen.json": new_rule}))
    banned = PromptEngine.load(data_dir=edited_data(tmp_path, "banned", {"safety/weapons.json": ban_pans}))
    medical = PromptEngine.load(data_dir=edited_data(tmp_path, "medical", {"templates/kitchen.json": allow_medical}))
    assert same.fingerprint == ENGINE.fingerprint
    assert len({ENGINE.fingerprint, STRICT.fingerprint, rule.fingerprint, banned.fingerprint,
                medical.fingerprint}) == 5

    pan = ProductSnapshot(sku="K-1", title="不锈钢炒锅", category="kitchen", selling_points=["受热均匀"])
    variants = ENGINE.variants(pan, 2) + ENGINE.variants(pan, 1, promo("限时5折")) + \
        ENGINE.variants(pan, 1, promo("治疗失眠", "P-2"))
    cache = PromptCache()
    for engine in (ENGINE, rule, banned, medical, ENGINE):
        assert_same_as_build(engine, cache, pan, variants)
    assert "受热均匀" in cache.build(ENGINE, pan, variants[0]).positive
    assert "锅底火苗均匀铺开" in cache.build(rule, pan, variants[0]).positive
    with pytest.raises(ContentRefused, match="weapons"):
        cache.build(banned, pan, variants[0])
    assert cache.build(medical, pan, variants[-1]).overlays[0].text == "治疗失眠"


def test_one_analysis_per_product_and_language_least_recently_used_goes_first(monkeypatch) -> None:
    analysed: list[str] = []
    analyse = ENGINE.analyse
    monkeypatch.setattr(ENGINE, "analyse", lambda product, language: analysed.append(product.sku)
                        or analyse(product, language))
    row = read_catalog()[0]
    a, b, c = (row.model_copy(update={"sku": sku, "title": f"{row.title} {sku}"}) for sku in ("A", "B", "C"))
    one = PromptCache()
    one.build(ENGINE, a, ENGINE.variants(a, 1)[0])
    cache = PromptCache(max_bytes=one.bytes * 5 // 2)  # room for two of these products
    for product in (a, b, a, c, a, b):
        for variant in ENGINE.variants(product, 3) + ENGINE.variants(product, 2, promo("限时5折")):
            cache.build(ENGINE, product, variant)
    assert analysed[1:] == ["A", "B", "C", "B"]  # c pushed b out, a was used after b; then b pushed c out
    assert len(cache) == 2 and cache.bytes == 2 * one.bytes <= cache.max_bytes


def test_an_analysis_larger_than_the_cache_is_not_kept() -> None:
    cache = PromptCache(max_bytes=100)
    product = read_catalog()[0]
    variant = ENGINE.variants(product, 1)[0]
    assert cache.build(ENGINE, product, variant) == ENGINE.build(product, variant)
    assert len(cache) == 0 and cache.bytes == 0
    with pytest.raises(ValueError, match="positive"):
        PromptCache(max_bytes=0)


def test_an_analysis_builds_only_prompts_in_its_language() -> None:
    product = read_catalog()[0]
    analysis = ENGINE.analyse(product, product.locale)
    assert analysis is not None
    variant = VariantSpec(variant_id="feed-x", style="tech", region=OTHER_LOCALE[product.locale])
    with pytest.raises(ValueError, match="cannot build"):
        ENGINE.build_from(analysis, product, variant)
    assert ENGINE.analyse(EDGE_PRODUCTS[1], Locale.ZH_CN) is None  # refused on its own: build says why
