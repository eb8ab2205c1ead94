"""Golden prompts for the sample catalog (regenerate: ``python -m inference.prompt.golden``, then review)."""

from __future__ import annotations

import json

from inference.prompt import PROMPT_TOKEN_BUDGET, PromptEngine, estimate_tokens
from inference.prompt.golden import GOLDEN, golden_cases, main, render


def test_engine_output_matches_the_golden_file() -> None:
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))
    actual = golden_cases(PromptEngine.load())
    assert [c["sku"] + "/" + c["variant"]["variant_id"] for c in actual] == [
        c["sku"] + "/" + c["variant"]["variant_id"] for c in expected]
    for got, want in zip(actual, expected, strict=True):
        assert got == want, f"{got['sku']}/{got['variant']['variant_id']} changed; if intended, run " \
                            "`python -m inference.prompt.golden` and review the diff"


def test_golden_file_covers_promos_both_languages_and_stays_in_budget() -> None:
    cases = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert {c["prompt"]["language"] for c in cases} == {"zh-CN", "en-US"}
    promo_cases = [c for c in cases if c["variant"]["promo_id"]]
    assert len({c["sku"] for c in promo_cases}) == 3
    assert all(c["prompt"]["overlays"][0]["text"] == "限时5折！买一赠三" for c in promo_cases)
    assert all(estimate_tokens(c["prompt"]["positive"]) <= PROMPT_TOKEN_BUDGET for c in cases)


def test_check_mode_reports_a_fresh_file() -> None:
    assert GOLDEN.read_text(encoding="utf-8") == render(golden_cases(PromptEngine.load()))
    assert main(["--check"]) == 0
