"""Product snapshot (+ promo) -> render requests: the planner's domain logic, free of Kafka.

The request key is a hash of everything that changes the video (model, prompt, image, parameters), so
equal keys mean equal videos: the planner skips a key it already requested, the renderer reuses a video it
already stored, and a redelivered message never yields a second, different video.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from consumers.outcomes import failed_event
from inference.params import ParamsError, plan_params, seed_from_key
from inference.prompt import ContentRefused, PromptEngine, VariantSpec
from inference.prompt.cache import PromptCache
from schemas.events import (
    Lane,
    ProductSnapshot,
    PromoStarted,
    Prompt,
    RenderParams,
    VideoFailed,
    VideoRequested,
)
from skuvid.settings import Settings


def request_key(model: str, prompt: Prompt, image_url: str | None, params: RenderParams) -> str:
    material = {"model": model, "prompt": prompt.prompt_hash, "image": image_url, "params": params.model_dump()}
    return hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass
class Plan:
    requests: list[VideoRequested] = field(default_factory=list)
    failures: list[VideoFailed] = field(default_factory=list)


class Planner:
    """Turns one product snapshot into its variants' render requests, or into the reason it gets none.

    Prompts are built through a ``PromptCache``: a product's analysis, made when its daily variants are planned,
    serves its promo variants later. Not thread-safe (one planner per event loop)."""

    def __init__(self, engine: PromptEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.prompts = PromptCache(max_bytes=settings.planner_prompt_cache_mb << 20)
        try:  # checked once; each request gets its own seed
            self._params: RenderParams | ParamsError = plan_params(settings, key="")
        except ParamsError as exc:
            self._params = exc  # every product is refused with it, as when checked per request

    def params_for(self, seed_key: str) -> RenderParams:
        """``plan_params(settings, key=seed_key)``: the settings' parameters with the seed of ``seed_key``;
        raises the settings' ``ParamsError``."""
        if isinstance(self._params, ParamsError):
            raise ParamsError(self._params.message)  # a new one each time: a raised exception keeps its traceback
        return self._params.model_copy(update={"seed": seed_from_key(seed_key)})

    def plan(self, product: ProductSnapshot, *, source_event_id: str, promo: PromoStarted | None = None) -> Plan:
        plan = Plan()
        try:
            variants = self.engine.variants(product, count=self.settings.variants_per_product, promo=promo)
            plan.requests = [self._request(product, v, source_event_id, promo) for v in variants]
        except (ContentRefused, ParamsError) as exc:
            # The product (or the promo's variant spec) is refused as a whole: no partial set of variants.
            plan.failures.append(failed_event(exc, sku=product.sku, source_event_id=source_event_id))
        return plan

    def _request(
        self, product: ProductSnapshot, variant: VariantSpec, source_event_id: str, promo: PromoStarted | None
    ) -> VideoRequested:
        prompt = self.prompts.build(self.engine, product, variant, clip_duration_s=self.settings.duration_s)
        model = self.settings.model
        seed_key = f"{model}|{prompt.prompt_hash}|{product.image_url or ''}"
        params = self.params_for(seed_key)
        key = request_key(model, prompt, product.image_url, params)
        return VideoRequested(
            event_id=f"req-{key[:32]}",
            occurred_at=datetime.now(UTC),
            request_key=key,
            sku=product.sku,
            variant_id=variant.variant_id,
            lane=Lane.HOT if (product.hot or promo is not None) else Lane.BULK,
            model=model,
            prompt=prompt,
            image_url=product.image_url,
            params=params,
            title=product.title,
            source_event_id=source_event_id,
        )
