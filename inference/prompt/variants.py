"""A/B variant specs: which style, channel, market and promo one video of a product is made for."""

from __future__ import annotations

import hashlib
import string
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints

from inference.prompt.selection import Selector, stable_int
from schemas.events import Locale, ProductSnapshot, PromoStarted

MAX_VARIANTS = 26
VARIANT_ID_MAX = 64
_MADE_MAX = 1024  # variant lists kept (styles rotation x count x promo); emptied when full
_made: dict[tuple[tuple[str, ...], int, int], tuple[PromoStarted | None, list[VariantSpec]]] = {}


class VariantSpec(BaseModel):
    """One video variant of a product; ``variant_id`` travels with the request to ``video.ready``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    variant_id: Annotated[str, StringConstraints(min_length=1, max_length=VARIANT_ID_MAX)]
    style: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    channel: Literal["detail", "feed"] = "detail"
    region: Locale | None = None
    promo: PromoStarted | None = None


def _promo_prefix(promo_id: str) -> str:
    prefix = f"promo-{promo_id}"
    if len(prefix) + 2 > VARIANT_ID_MAX:  # keep "-<letter>" room; long ids become a short digest
        prefix = "promo-" + hashlib.blake2b(promo_id.encode(), digest_size=8).hexdigest()
    return prefix


def make_variants(selector: Selector, product: ProductSnapshot, count: int,
                  promo: PromoStarted | None) -> list[VariantSpec]:
    """``count`` variants, ids ``daily-a``, ``daily-b`` … (``promo-<id>-a`` … with a promo).

    Styles rotate through the category's preferred styles from an offset fixed by a stable hash of the
    SKU (so a catalog does not all start on the same style); a promo's own style, when given, comes first.
    Raises ValueError when ``count`` is outside 1..26, ContentRefused when the promo's style is unknown.
    """
    if not 1 <= count <= MAX_VARIANTS:
        raise ValueError(f"count must be between 1 and {MAX_VARIANTS}, not {count}")
    preferred = list(selector.template_for(product.category).styles)
    offset = stable_int(product.sku) % len(preferred)
    rotation = preferred[offset:] + preferred[:offset]
    if promo is not None and promo.style:
        first = selector.style_key(promo.style)
        rotation = [first, *(s for s in rotation if s != first)]
    key = (tuple(rotation), count, id(promo))  # a fan-out plans one promo object for many products
    made = _made.get(key)
    if made is not None and made[0] is promo:  # the entry holds its promo: an id is never reused while kept
        return list(made[1])
    prefix = _promo_prefix(promo.promo_id) if promo is not None else "daily"
    specs = [
        VariantSpec(variant_id=f"{prefix}-{string.ascii_lowercase[i]}", style=rotation[i % len(rotation)], promo=promo)
        for i in range(count)
    ]
    if len(_made) >= _MADE_MAX:
        _made.clear()
    _made[key] = (promo, specs)
    return list(specs)
