"""Golden prompts for the sample catalog: ``python -m inference.prompt.golden`` rewrites
``tests/golden/prompts.json``; ``--check`` only compares (exit status 1 and a diff summary when stale).

Review the file by eye after regenerating: it is the record of what merchandisers' data produces.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from inference.prompt.engine import PromptEngine
from inference.prompt.variants import VariantSpec
from schemas.events import Locale, ProductCreated, ProductSnapshot, PromoStarted

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "tests" / "data" / "catalog.jsonl"
PROMOS = ROOT / "tests" / "data" / "promo.jsonl"
GOLDEN = ROOT / "tests" / "golden" / "prompts.json"
DAILY_VARIANTS = 2


def read_catalog(path: Path = CATALOG) -> list[ProductSnapshot]:
    """Snapshots of the product.created events in a JSON-lines file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [ProductCreated.model_validate_json(line).snapshot() for line in lines if line.strip()]


def read_promos(path: Path = PROMOS) -> list[PromoStarted]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [PromoStarted.model_validate_json(line) for line in lines if line.strip()]


def golden_variants(engine: PromptEngine, product: ProductSnapshot, promos: list[PromoStarted]) -> list[VariantSpec]:
    """Two daily variants, one per covering promo, and a feed variant for the other market."""
    variants = engine.variants(product, DAILY_VARIANTS)
    for promo in promos:
        if product.sku in promo.skus:
            variants += engine.variants(product, 1, promo)
    other = Locale.EN_US if product.locale is Locale.ZH_CN else Locale.ZH_CN
    variants.append(VariantSpec(variant_id="feed-x", style=variants[0].style, channel="feed", region=other))
    return variants


def golden_cases(engine: PromptEngine) -> list[dict[str, Any]]:
    """The engine's output for every golden variant of the sample catalog, as JSON-ready dicts."""
    promos = read_promos()
    cases = []
    for product in read_catalog():
        for variant in golden_variants(engine, product, promos):
            prompt = engine.build(product, variant)
            cases.append({
                "sku": product.sku,
                "variant": variant.model_dump(mode="json", exclude={"promo"}) | {
                    "promo_id": variant.promo.promo_id if variant.promo else None},
                "prompt": prompt.model_dump(mode="json"),
            })
    return cases


def render(cases: list[dict[str, Any]]) -> str:
    return json.dumps(cases, ensure_ascii=False, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when the file is stale")
    args = parser.parse_args(argv)
    text = render(golden_cases(PromptEngine.load()))
    if args.check:
        current = GOLDEN.read_text(encoding="utf-8") if GOLDEN.exists() else ""
        if current != text:
            print(f"{GOLDEN} is stale; run: python -m inference.prompt.golden", file=sys.stderr)
            return 1
        return 0
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(text, encoding="utf-8")
    print(f"wrote {GOLDEN}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
