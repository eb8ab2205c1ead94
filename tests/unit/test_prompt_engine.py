"""PromptEngine behaviour: templates, language, promo overlays, variants, cleaning, budget, hashing."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from inference.prompt import (
    PROMPT_TOKEN_BUDGET,
    ContentRefused,
    LibraryError,
    PromptEngine,
    VariantSpec,
    estimate_tokens,
    prompt_hash,
)
from inference.prompt.golden import read_catalog, read_promos
from inference.prompt.library import DEFAULT_DATA_DIR
from schemas.events import Locale, ProductSnapshot, PromoStarted, Reason

DATA = Path(__file__).resolve().parents[1] / "data"
WAN_NEGATIVE_ZH = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
CJK = re.compile(r"[\u3400-\u9fff]")


@pytest.fixture(scope="module")
def engine() -> PromptEngine:
    return PromptEngine.load()


@pytest.fixture(scope="module")
def catalog() -> dict[str, ProductSnapshot]:
    return {p.sku: p for p in read_catalog(DATA / "catalog.jsonl")}


@pytest.fixture(scope="module")
def promo() -> PromoStarted:
    return read_promos(DATA / "promo.jsonl")[0]


def product(**fields: object) -> ProductSnapshot:
    base: dict[str, object] = {"sku": "SKU-T1", "title": "降噪蓝牙耳机", "category": "3c"}
    return ProductSnapshot.model_validate(base | fields)


def daily(engine: PromptEngine, snapshot: ProductSnapshot, **overrides: object) -> VariantSpec:
    return engine.variants(snapshot, 1)[0].model_copy(update=overrides)


def test_sample_catalog_covers_the_demo_needs(catalog: dict[str, ProductSnapshot], engine: PromptEngine) -> None:
    products = list(catalog.values())
    assert len(products) >= 10
    assert len({engine.template_for(p.category).id for p in products}) >= 6
    assert {p.locale for p in products} == {Locale.ZH_CN, Locale.EN_US}
    assert any(CJK.search(p.title) for p in products) and any(not CJK.search(p.title) for p in products)
    assert sum(1 for p in products if p.image_url) == 2
    assert any("第一" in p.title for p in products)


@pytest.mark.parametrize(
    ("category", "template_id"),
    [("3c", "3c"), ("3C", "3c"), ("数码", "3c"), ("digital", "3c"), ("手机", "3c"), ("手机配件", "3c"),
     ("美妆", "beauty"), ("skincare", "beauty"), ("Skin Care", "beauty"), ("家具", "home"), ("厨具", "kitchen"),
     ("ＫＩＴＣＨＥＮ", "kitchen"), ("鞋服", "apparel"), ("运动鞋", "apparel"), ("食品", "food"), ("母婴", "baby"),
     ("outdoor", "sports"), ("家电", "appliances"), ("礼品", "generic"), ("???", "generic")],
)
def test_category_aliases(engine: PromptEngine, category: str, template_id: str) -> None:
    assert engine.template_for(category).id == template_id


def test_required_templates_exist_in_both_languages(engine: PromptEngine) -> None:
    templates = engine.library.templates
    assert {"3c", "home", "kitchen", "beauty", "apparel", "food", "baby", "sports", "appliances", "generic"} <= set(
        templates)
    for template in templates.values():
        assert CJK.search(template.zh.scenes[0]) and not CJK.search(template.en.scenes[0])
        assert all(CJK.search(r.zh) and not CJK.search(r.en) for r in template.rules)


def test_language_follows_the_market_not_the_title(engine: PromptEngine, catalog: dict[str, ProductSnapshot]) -> None:
    shoes = catalog["SKU-5001"]  # Chinese title, en-US market
    prompt = engine.build(shoes, daily(engine, shoes))
    assert prompt.language is Locale.EN_US
    assert shoes.title in prompt.positive  # the product noun may stay as written
    assert not CJK.search(prompt.positive.replace(shoes.title, ""))  # every template word is English
    keyboard = catalog["SKU-1003"]  # English title, zh-CN market
    assert engine.build(keyboard, daily(engine, keyboard)).language is Locale.ZH_CN


def test_variant_region_overrides_the_product_locale(engine: PromptEngine,
                                                    catalog: dict[str, ProductSnapshot]) -> None:
    bank = catalog["SKU-1002"]
    prompt = engine.build(bank, daily(engine, bank, region=Locale.ZH_CN))
    assert prompt.language is Locale.ZH_CN
    assert prompt.negative.startswith(WAN_NEGATIVE_ZH)
    assert "的商品展示视频" in prompt.positive


def test_negative_prompts(engine: PromptEngine, catalog: dict[str, ProductSnapshot]) -> None:
    zh = engine.build(catalog["SKU-1001"], daily(engine, catalog["SKU-1001"]))
    en = engine.build(catalog["SKU-1002"], daily(engine, catalog["SKU-1002"]))
    assert zh.negative.startswith(WAN_NEGATIVE_ZH) and "水印" in zh.negative and "logo" in zh.negative
    assert "text, watermark, logo" in en.negative and not CJK.search(en.negative)
    assert estimate_tokens(zh.negative) <= PROMPT_TOKEN_BUDGET and estimate_tokens(en.negative) <= PROMPT_TOKEN_BUDGET


def test_promo_copy_becomes_an_overlay_never_prompt_text(
    engine: PromptEngine, catalog: dict[str, ProductSnapshot], promo: PromoStarted
) -> None:
    earbuds = catalog["SKU-1001"]
    variant = engine.variants(earbuds, 1, promo)[0]
    prompt = engine.build(earbuds, variant, clip_duration_s=4.0)
    assert variant.variant_id == "promo-P-1111-a" and variant.style == "festive"
    for fragment in ("限时", "5折", "买一赠三", promo.copy_text):
        assert fragment not in prompt.positive
    [overlay] = prompt.overlays
    assert overlay.text == promo.copy_text == "限时5折！买一赠三"
    assert (overlay.start_s, overlay.end_s) == (0.0, 4.0)
    assert overlay.promo_id == promo.promo_id
    assert (overlay.valid_from, overlay.valid_until) == (promo.starts_at, promo.ends_at)
    assert engine.build(earbuds, daily(engine, earbuds)).overlays == []


def test_a_promos_overlay_and_hash_do_not_depend_on_the_promos_built_before(
    engine: PromptEngine, catalog: dict[str, ProductSnapshot], promo: PromoStarted
) -> None:
    """Overlays and their JSON are kept per promo for fan-outs; the same instants written with another UTC offset
    are equal datetimes but other JSON, so each keeps its own spelling and hash, whichever came first."""
    from datetime import timedelta, timezone

    from inference.prompt import engine as engine_module

    shifted = promo.model_copy(update={"starts_at": promo.starts_at.astimezone(timezone.utc),
                                       "ends_at": promo.ends_at.astimezone(timezone.utc)})
    assert shifted.starts_at == promo.starts_at and str(shifted.starts_at) != str(promo.starts_at)
    earbuds = catalog["SKU-1001"]

    def prompts(*promos: PromoStarted) -> list:
        engine_module._captions.cache_clear()
        engine_module._overlay_docs.clear()
        return [engine.build(earbuds, engine.variants(earbuds, 1, p)[0]) for p in promos]

    alone = [prompts(promo)[0], prompts(shifted)[0]]
    assert alone[0].prompt_hash != alone[1].prompt_hash
    assert prompts(promo, shifted) == alone
    assert prompts(shifted, promo) == alone[::-1]
    assert prompts(shifted, promo)[1].overlays[0].valid_from.utcoffset() == timedelta(hours=8)
    assert prompts(promo, shifted)[1].overlays[0].valid_from.utcoffset() == timedelta(0)


def test_promo_copy_repeated_in_the_title_is_cut(engine: PromptEngine, promo: PromoStarted) -> None:
    snapshot = product(title="限时5折！买一赠三 降噪蓝牙耳机", selling_points=["主动降噪"])
    prompt = engine.build(snapshot, engine.variants(snapshot, 1, promo)[0])
    assert "5折" not in prompt.positive and "赠三" not in prompt.positive
    assert "降噪蓝牙耳机" in prompt.positive


def test_selling_points_become_scenes_not_words(engine: PromptEngine, catalog: dict[str, ProductSnapshot]) -> None:
    earbuds = catalog["SKU-1001"]
    prompt = engine.build(earbuds, daily(engine, earbuds))
    assert "30小时" not in prompt.positive and "续航" not in prompt.positive
    assert "人物从清晨通勤到深夜一直在使用" in prompt.positive
    assert "水珠溅落在产品表面" in prompt.positive  # IPX5防水 via the common rules


def test_vague_praise_becomes_concrete_attributes(engine: PromptEngine, catalog: dict[str, ProductSnapshot]) -> None:
    chair = catalog["SKU-2001"]  # "好看的设计" with material, colour and shape attributes
    prompt = engine.build(chair, daily(engine, chair))
    assert "好看" not in prompt.positive and "设计" not in prompt.positive
    assert "特写展示白橡木材质、原木色配色、弧形靠背造型" in prompt.positive
    english = engine.build(chair, daily(engine, chair, region=Locale.EN_US))
    assert "close-up on the white oak material, natural wood color, curved backrest shape" in english.positive


def test_vague_praise_without_attributes_is_dropped(engine: PromptEngine) -> None:
    snapshot = product(selling_points=["好看的设计", "Beautiful design"])
    prompt = engine.build(snapshot, daily(engine, snapshot))
    for word in ("好看", "设计", "Beautiful", "design", "特写展示"):
        assert word not in prompt.positive


def test_unmatched_selling_points_follow_the_prompt_language(engine: PromptEngine) -> None:
    snapshot = product(selling_points=["附赠收纳袋", "Includes a carry pouch"])
    zh = engine.build(snapshot, daily(engine, snapshot))
    en = engine.build(snapshot, daily(engine, snapshot, region=Locale.EN_US))
    assert "附赠收纳袋" in zh.positive
    assert "Includes a carry pouch" in en.positive and "附赠收纳袋" not in en.positive


def test_title_marketing_noise_is_removed(engine: PromptEngine) -> None:
    snapshot = product(title="【包邮】2024新款 降噪蓝牙耳机 满300减50 热卖")
    prompt = engine.build(snapshot, daily(engine, snapshot))
    assert "降噪蓝牙耳机的商品展示视频" in prompt.positive
    for noise in ("包邮", "2024", "新款", "满300", "热卖", "【"):
        assert noise not in prompt.positive


def test_absolute_terms_dropped_by_default(engine: PromptEngine, catalog: dict[str, ProductSnapshot]) -> None:
    mask = catalog["SKU-4001"]
    prompt = engine.build(mask, daily(engine, mask))
    assert "第一" not in prompt.positive and "全网" not in prompt.positive
    assert "玻尿酸补水面膜的商品展示视频" in prompt.positive
    serum = catalog["SKU-4002"]
    assert "best" not in engine.build(serum, daily(engine, serum)).positive.lower()


def test_absolute_terms_refused_under_refuse_policy(catalog: dict[str, ProductSnapshot]) -> None:
    strict = PromptEngine.load(absolute_terms_policy="refuse")
    mask = catalog["SKU-4001"]
    with pytest.raises(ContentRefused) as info:
        strict.build(mask, strict.variants(mask, 1)[0])
    assert info.value.reason is Reason.UNSAFE_CONTENT and info.value.rule == "absolute:全网第一"


def test_unsafe_catalog_product_refused_before_anything_else(engine: PromptEngine) -> None:
    [toy] = read_catalog(DATA / "catalog_unsafe.jsonl")
    with pytest.raises(ContentRefused) as info:
        engine.build(toy, daily(engine, toy))
    assert info.value.reason is Reason.UNSAFE_CONTENT and info.value.rule == "weapons:仿真枪"
    assert toy.sku in str(info.value) and "title" in str(info.value) and toy.title in str(info.value)


@pytest.mark.parametrize(
    ("fields", "rule", "where"),
    [
        ({"selling_points": ["好用", "降血压"], "category": "食品"}, "medical:降血压", "selling point 2"),
        ({"attributes": {"配件": "送 子-弹 一盒"}}, "weapons:子弹", "attribute '配件'"),
        ({"brand": "Marlboro cigarettes"}, "tobacco:cigarette", "brand"),
    ],
)
def test_refusals_name_the_field(engine: PromptEngine, fields: dict[str, object], rule: str, where: str) -> None:
    snapshot = product(**fields)
    with pytest.raises(ContentRefused) as info:
        engine.build(snapshot, daily(engine, snapshot))
    assert info.value.rule == rule and where in info.value.message


def test_unsafe_promo_copy_refuses_the_promo_variant(engine: PromptEngine, promo: PromoStarted) -> None:
    bad = promo.model_copy(update={"copy_text": "买耳机送仿真枪"})
    snapshot = product()
    with pytest.raises(ContentRefused) as info:
        engine.build(snapshot, engine.variants(snapshot, 1, bad)[0])
    assert info.value.rule == "weapons:仿真枪" and "promo copy" in info.value.message


def test_absolute_terms_dropped_from_promo_copy(engine: PromptEngine, promo: PromoStarted) -> None:
    snapshot = product()
    only_absolute = promo.model_copy(update={"copy_text": "全网最低价！"})
    prompt = engine.build(snapshot, engine.variants(snapshot, 1, only_absolute)[0])
    assert prompt.overlays == []  # nothing but an absolute term: no caption at all
    partly = promo.model_copy(update={"copy_text": "顶级音质 5折"})
    prompt = engine.build(snapshot, engine.variants(snapshot, 1, partly)[0])
    assert [o.text for o in prompt.overlays] == ["音质 5折"]


def test_promo_copy_shown_as_written_when_nothing_is_dropped(engine: PromptEngine, promo: PromoStarted) -> None:
    snapshot = product(title="最佳降噪耳机")  # a drop elsewhere must not touch the copy
    written = promo.model_copy(update={"copy_text": " 双十一\u200b狂欢！ＶＩＰ专享 "})
    prompt = engine.build(snapshot, engine.variants(snapshot, 1, written)[0])
    assert [o.text for o in prompt.overlays] == ["双十一狂欢！ＶＩＰ专享"]


@pytest.mark.parametrize(
    "fields",
    [{"title": ""}, {"title": "   "}, {"title": "【包邮】"}, {"title": "最佳", "selling_points": ["第一", " "]},
     {"title": "!!!", "selling_points": ["限时特价"]}],
)
def test_empty_content_is_refused(engine: PromptEngine, fields: dict[str, object]) -> None:
    snapshot = product(**fields)
    with pytest.raises(ContentRefused) as info:
        engine.build(snapshot, daily(engine, snapshot))
    assert info.value.reason is Reason.EMPTY_CONTENT and info.value.rule == "empty"
    assert snapshot.sku in info.value.message


def test_selling_points_alone_are_enough(engine: PromptEngine) -> None:
    snapshot = product(title="", selling_points=["续航30小时"])
    prompt = engine.build(snapshot, daily(engine, snapshot))
    assert "，数码产品的商品展示视频。" in prompt.positive  # the template noun stands in for the title


def test_image_hint_only_with_a_product_image(engine: PromptEngine, catalog: dict[str, ProductSnapshot]) -> None:
    with_image, without = catalog["SKU-1001"], catalog["SKU-3001"]
    assert "以商品实拍图为首帧" in engine.build(with_image, daily(engine, with_image)).positive
    assert "以商品实拍图为首帧" not in engine.build(without, daily(engine, without)).positive


def test_channel_changes_pacing_words(engine: PromptEngine, catalog: dict[str, ProductSnapshot]) -> None:
    pan = catalog["SKU-3001"]
    detail = engine.build(pan, daily(engine, pan))
    feed = engine.build(pan, daily(engine, pan, channel="feed"))
    assert "节奏舒缓" in detail.positive and "节奏明快" in feed.positive
    assert detail.prompt_hash != feed.prompt_hash


def test_style_words_come_from_the_curated_list(engine: PromptEngine, catalog: dict[str, ProductSnapshot]) -> None:
    pan = catalog["SKU-3001"]
    assert engine.build(pan, daily(engine, pan, style="cyberpunk")).positive.startswith("赛博朋克，")
    assert engine.build(pan, daily(engine, pan, style="科技感")).positive.startswith("科技感，")  # alias
    with pytest.raises(ContentRefused) as info:
        engine.build(pan, daily(engine, pan, style="vaporwave"))
    assert info.value.reason is Reason.INVALID_PARAMS and info.value.rule == "style:vaporwave"


def test_variants_are_deterministic_and_distinct(engine: PromptEngine, catalog: dict[str, ProductSnapshot]) -> None:
    pan = catalog["SKU-3001"]
    first, again = engine.variants(pan, 3), PromptEngine.load().variants(pan, 3)
    assert first == again
    assert [v.variant_id for v in first] == ["daily-a", "daily-b", "daily-c"]
    preferred = engine.template_for(pan.category).styles
    assert sorted(v.style for v in first) == sorted(preferred)
    hashes = {engine.build(pan, v).prompt_hash for v in first}
    assert len(hashes) == 3


def test_variant_style_offsets_differ_across_skus(engine: PromptEngine) -> None:
    first_styles = {engine.variants(product(sku=f"SKU-{i}"), 1)[0].style for i in range(40)}
    assert first_styles == set(engine.template_for("3c").styles)


def test_variant_count_bounds(engine: PromptEngine) -> None:
    snapshot = product()
    assert len(engine.variants(snapshot, 8)) == 8
    with pytest.raises(ValueError, match="count"):
        engine.variants(snapshot, 0)


def test_promo_variant_ids_stay_within_the_schema_limit(engine: PromptEngine, promo: PromoStarted) -> None:
    long_promo = promo.model_copy(update={"promo_id": "P" * 64, "style": None})
    [variant] = engine.variants(product(), 1, long_promo)
    assert variant.variant_id.startswith("promo-") and len(variant.variant_id) <= 64
    with pytest.raises(ContentRefused):
        engine.variants(product(), 1, promo.model_copy(update={"style": "unheard-of"}))


def test_same_input_same_prompt_and_hash(engine: PromptEngine, catalog: dict[str, ProductSnapshot]) -> None:
    fresh = PromptEngine.load()
    for snapshot in catalog.values():
        variant = daily(engine, snapshot)
        a, b = engine.build(snapshot, variant), fresh.build(snapshot, variant)
        assert a == b
        assert a.prompt_hash == prompt_hash(a.positive, a.negative, a.language, a.template_id, a.template_version,
                                            a.overlays)


def test_template_version_enters_the_hash(tmp_path: Path, catalog: dict[str, ProductSnapshot]) -> None:
    data = tmp_path / "data"
    shutil.copytree(DEFAULT_DATA_DIR, data)
    path = data / "templates" / "kitchen.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["version"] += 1
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    pan = catalog["SKU-3001"]
    base, bumped = PromptEngine.load(), PromptEngine.load(data_dir=data)
    a, b = base.build(pan, daily(base, pan)), bumped.build(pan, daily(bumped, pan))
    assert a.positive == b.positive and a.template_version + 1 == b.template_version
    assert a.prompt_hash != b.prompt_hash


def test_huge_input_fits_the_token_budget_least_important_dropped_first(engine: PromptEngine) -> None:
    points = ["续航30小时", "主动降噪"] + [f"附赠{i}号配件收纳包与说明书" * 8 for i in range(28)]
    attributes = {f"颜色{i}": "曜石黑" * 20 for i in range(40)}
    snapshot = product(title="降噪蓝牙耳机" * 50, selling_points=points, attributes=attributes,
                       image_url="file:tests/data/images/x.png")
    prompt = engine.build(snapshot, daily(engine, snapshot, style="tech"))
    assert estimate_tokens(prompt.positive) <= PROMPT_TOKEN_BUDGET
    assert prompt.positive.startswith("科技感，降噪蓝牙耳机")
    assert "以商品实拍图为首帧" in prompt.positive  # high priority survives
    assert "人物从清晨通勤到深夜" in prompt.positive and "嘈杂的地铁车厢" in prompt.positive  # rule actions too
    assert "附赠0号" in prompt.positive and "附赠27号" not in prompt.positive  # raw points: first kept, last cut
    assert "画面清晰，细节丰富" not in prompt.positive  # the least important goes first


def test_bad_clip_duration_is_a_value_error(engine: PromptEngine) -> None:
    snapshot = product()
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="clip_duration_s"):
            engine.build(snapshot, daily(engine, snapshot), clip_duration_s=bad)


def test_broken_data_file_stops_loading_with_its_name(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(DEFAULT_DATA_DIR, data)
    (data / "templates" / "kitchen.json").write_text('{"id": "kitchen", "version": 0}', encoding="utf-8")
    with pytest.raises(LibraryError, match=r"kitchen\.json"):
        PromptEngine.load(data_dir=data)


def test_template_referencing_an_unknown_style_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(DEFAULT_DATA_DIR, data)
    path = data / "templates" / "food.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["styles"] = ["steampunk"]
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(LibraryError, match="steampunk"):
        PromptEngine.load(data_dir=data)


def test_variant_spec_is_strict() -> None:
    with pytest.raises(ValueError):
        VariantSpec(variant_id="daily-a", style="tech", colour="red")  # type: ignore[call-arg]
    spec = VariantSpec(variant_id="daily-a", style="tech")
    with pytest.raises(ValueError):
        spec.style = "minimal"  # type: ignore[misc]
