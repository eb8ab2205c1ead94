"""The content safety gate: a table of refusals, evasions and harmless look-alikes."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from inference.prompt import ContentRefused, LibraryError, PromptEngine
from inference.prompt.library import DEFAULT_DATA_DIR
from inference.prompt.safety import SafetyGate, load_lists
from schemas.events import Reason


@pytest.fixture(scope="module")
def gate() -> SafetyGate:
    return SafetyGate.load("drop")


@pytest.fixture(scope="module")
def strict_gate() -> SafetyGate:
    return SafetyGate.load("refuse")


# (text, allowed, rule or None)
CASES: list[tuple[str, bool, str | None]] = [
    # Chinese refusals, one or more per list
    ("仿真枪玩具 M416", False, "weapons:仿真枪"),
    ("军用手枪模型", False, "weapons:手枪"),
    ("血腥暴力游戏周边", False, "violence:血腥"),
    ("色情影片", False, "adult:色情"),
    ("台独旗帜贴纸", False, "political:台独"),
    ("印有国旗图案的T恤", False, "political:国旗"),
    ("冰毒吸食工具", False, "drugs:冰毒"),
    ("百家乐赌场筹码", False, "gambling:百家乐"),
    ("电子烟烟弹套装", False, "tobacco:电子烟"),
    ("针孔摄像头", False, "prohibited:针孔摄像头"),
    ("降血压养生茶", False, "medical:降血压"),
    ("抗癌保健品", False, "medical:抗癌"),
    # English refusals, word boundaries, plurals
    ("Realistic toy gun for kids", False, "weapons:gun"),
    ("GUNS and holsters", False, "weapons:gun"),
    ("Hunting rifle scope", False, "weapons:rifle"),
    ("Free porn access card", False, "adult:porn"),
    ("Online casino chips", False, "gambling:online casino"),
    ("Menthol cigarettes", False, "tobacco:cigarette"),
    ("Herbal tea that lowers blood pressure", False, "medical:lowers blood pressure"),
    ("Nazi memorabilia", False, "political:nazi"),
    # Evasions: full-width, spacing, punctuation, zero-width, mixed scripts, look-alikes, traditional
    ("ｇｕｎ holster", False, "weapons:gun"),
    ("g u n", False, "weapons:gun"),
    ("G.U.N. replica", False, "weapons:gun"),
    ("g\u200bu\u200bn", False, "weapons:gun"),
    ("枪-支配件", False, "weapons:枪支"),
    ("色 情", False, "adult:色情"),
    ("色\u200b情", False, "adult:色情"),
    ("买gun送子弹", False, "weapons:gun"),
    ("gυn (Greek upsilon)", False, "weapons:gun"),
    ("сocaine (Cyrillic es)", False, "drugs:cocaine"),
    ("ＣＯＣＡＩＮＥ", False, "drugs:cocaine"),
    ("仿真槍", False, "weapons:仿真槍"),
    ("c-o-c-a-i-n-e", False, "drugs:cocaine"),
    # Negatives that must pass untouched
    ("Scunthorpe United scarf", True, None),
    ("Begun in 1990, Gundam models", True, None),
    ("Unisex hoodie from Sussex", True, None),
    ("特色情侣装", True, None),
    ("情人节红色情侣手链", True, None),
    ("儿童水枪玩具", True, None),
    ("筋膜枪按摩器", True, None),
    ("Hot glue gun for crafts", True, None),
    ("Massage  gun with 6 heads", True, None),
    ("Gunmetal grey watch strap", True, None),
    ("Lavender bath bombs", True, None),
    ("第一代降噪耳机", True, None),
    ("象牙白陶瓷杯", True, None),
    ("100% 纯棉 T恤", True, None),
    ("Dishwasher-safe bottle", True, None),
    ("Sexy? No: essex cotton shirt", True, None),
    # Absolute terms under the default drop policy: allowed, term cut out
    ("全网第一的玻尿酸补水面膜", True, "absolute:全网第一"),
    ("The best serum for glowing skin", True, "absolute:the best"),
    ("NO.1 品牌吹风机", True, "absolute:no. 1"),
    ("本品100%有效", True, "absolute:100%有效"),
    ("顶级真皮沙发", True, "absolute:顶级"),
]


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 40
    assert sum(1 for _, allowed, rule in CASES if allowed and rule is None) >= 10


@pytest.mark.parametrize(("text", "allowed", "rule"), CASES, ids=[c[0] for c in CASES])
def test_gate_verdicts(gate: SafetyGate, text: str, allowed: bool, rule: str | None) -> None:
    verdict = gate.check(text)
    assert (verdict.allowed, verdict.rule) == (allowed, rule)
    if not allowed:
        assert verdict.cleaned == ""


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ("全网第一的玻尿酸补水面膜", "玻尿酸补水面膜"),
        ("The best serum for glowing skin", "serum for glowing skin"),
        ("顶级真皮沙发", "真皮沙发"),
        ("Scunthorpe United scarf", "Scunthorpe United scarf"),
        ("ＦＵＬＬ－ＷＩＤＴＨ  title", "FULL-WIDTH title"),
    ],
)
def test_cleaned_text_drops_absolute_terms_and_normalises(gate: SafetyGate, text: str, cleaned: str) -> None:
    assert gate.check(text).cleaned == cleaned


def test_refuse_policy_refuses_absolute_terms(strict_gate: SafetyGate) -> None:
    verdict = strict_gate.check("全网第一的玻尿酸补水面膜")
    assert not verdict.allowed and verdict.rule == "absolute:全网第一"
    assert strict_gate.check("玻尿酸补水面膜").allowed


def test_medical_claims_refused_only_without_template_permission(gate: SafetyGate) -> None:
    assert gate.screen(["降血压养生茶"]).refusal is not None
    assert gate.screen(["降血压养生茶"], medical_allowed=True).refusal is None


def test_screen_reports_which_text_refused(gate: SafetyGate) -> None:
    result = gate.screen(["降噪耳机", "", "送 g u n 一把"])
    assert result.refusal is not None and result.refused_index == 2


def test_terms_never_span_two_texts(gate: SafetyGate) -> None:
    result = gate.screen(["枪", "支"])
    assert result.refusal is None and result.cleaned == ("枪", "支")


def test_mask_character_in_input_does_not_split_fields(gate: SafetyGate) -> None:
    result = gate.screen(["a\ua000b", "最佳c"])
    assert result.cleaned == ("a b", "c")


def test_engine_check_is_the_gate() -> None:
    engine = PromptEngine.load()
    assert engine.check("仿真枪").rule == "weapons:仿真枪"
    assert engine.check("降噪耳机").allowed


def test_lists_are_data_files_and_easy_to_extend(tmp_path: Path) -> None:
    safety = tmp_path / "safety"
    safety.mkdir()
    for path in (DEFAULT_DATA_DIR / "safety").glob("*.json"):
        (safety / path.name).write_bytes(path.read_bytes())
    (safety / "fireworks.json").write_text(json.dumps(
        {"id": "fireworks", "action": "refuse", "description": "test list", "zh": ["烟花爆竹"], "en": ["firecracker"]}
    ), encoding="utf-8")
    extended = SafetyGate.load("drop", tmp_path)
    assert extended.check("春节烟花爆竹").rule == "fireworks:烟花爆竹"
    assert extended.check("Firecrackers!").rule == "fireworks:firecracker"
    assert "fireworks" in extended.list_ids


def test_invalid_list_file_names_the_file(tmp_path: Path) -> None:
    safety = tmp_path / "safety"
    safety.mkdir()
    (safety / "broken.json").write_text('{"id": "broken", "action": "explode"}', encoding="utf-8")
    with pytest.raises(LibraryError, match=r"broken\.json"):
        load_lists(safety)


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="absolute_terms_policy"):
        SafetyGate(load_lists(DEFAULT_DATA_DIR / "safety"), "ignore")  # type: ignore[arg-type]


def test_content_refused_carries_reason_rule_and_message() -> None:
    exc = ContentRefused(Reason.UNSAFE_CONTENT, "weapons:gun", "product SKU-1: title 'gun' matches 'gun'")
    assert str(exc) == exc.message == "product SKU-1: title 'gun' matches 'gun'"
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.reason, copy.rule, copy.message) == (exc.reason, exc.rule, exc.message)
