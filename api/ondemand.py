"""``POST /v1/videos`` bodies -> the ``VideoRequested`` the renderers take from the on-demand lane.

The prompt passes the same content safety gate as catalog products (``PromptEngine.check``: refusing lists,
medical claims, absolute terms per policy): a refusal is 422 with the reason code (``unsafe_content``,
``empty_content``, ``invalid_params``) and the rule that matched. Parameters come from the same validation
as planned videos (``inference.params``) and the request key is the same content hash, so an identical
request — from a retry, another replica, or another client — lands on the same stored video.

The video id is a hash of the ``Idempotency-Key``: the same key always names the same render.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from api.errors import ApiProblem
from api.index import ONDEMAND_PREFIX
from api.models import VideoCreate
from consumers.planning import request_key
from inference.params import ParamsError, make_params, seed_from_key
from inference.prompt import PROMPT_TOKEN_BUDGET, PromptEngine, estimate_tokens, prompt_hash
from inference.prompt.text import has_cjk
from schemas.events import Lane, Locale, Prompt, Reason, VideoRequested
from skuvid.settings import Settings

TEMPLATE_ID = "ondemand"
TEMPLATE_VERSION = 1
DEFAULT_SKU = "ondemand"  # storage folder of renders that name no product


def video_id(idempotency_key: str) -> str:
    """The id of the render an ``Idempotency-Key`` names (24 hex characters)."""
    return hashlib.sha256(f"skuvid-video:{idempotency_key}".encode()).hexdigest()[:24]


def screened_prompt(engine: PromptEngine, text: str) -> Prompt:
    """The typed prompt for ``text``, or ``ApiProblem(422)`` when the safety gate refuses it."""
    verdict = engine.check(text)
    if not verdict.allowed:
        raise ApiProblem(422, Reason.UNSAFE_CONTENT.value, "the prompt matches a rule of the content safety gate",
                         field="prompt", rule=verdict.rule)
    positive = verdict.cleaned.strip()
    if not positive:
        raise ApiProblem(422, Reason.EMPTY_CONTENT.value, "nothing usable is left of the prompt after screening",
                         field="prompt")
    if estimate_tokens(positive) > PROMPT_TOKEN_BUDGET:
        raise ApiProblem(422, Reason.INVALID_PARAMS.value,
                         f"the prompt is longer than the text encoder's budget of {PROMPT_TOKEN_BUDGET} tokens",
                         field="prompt")
    language = Locale.ZH_CN if has_cjk(positive) else Locale.EN_US
    negative = engine.library.common.negative.get(language)
    digest = prompt_hash(positive, negative, language, TEMPLATE_ID, TEMPLATE_VERSION, [])
    return Prompt(positive=positive, negative=negative, language=language, template_id=TEMPLATE_ID,
                  template_version=TEMPLATE_VERSION, overlays=[], prompt_hash=digest)


def build_request(body: VideoCreate, *, vid: str, settings: Settings, engine: PromptEngine,
                  now: datetime) -> VideoRequested:
    """The render request of ``body`` under id ``vid``; raises ``ApiProblem(422)`` for refused content or
    parameters the model cannot render."""
    prompt = screened_prompt(engine, body.prompt)
    model = settings.model
    try:
        params = make_params(
            resolution=body.resolution, aspect=body.aspect or settings.aspect, duration_s=body.duration,
            fps=settings.fps, steps=settings.steps, guidance_scale=settings.guidance_scale,
            flow_shift=settings.flow_shift, seed=seed_from_key(f"{model}|{prompt.prompt_hash}|{body.image_url or ''}"),
        )
    except ParamsError as exc:
        raise ApiProblem(422, Reason.INVALID_PARAMS.value, exc.message) from None
    key = request_key(model, prompt, body.image_url, params)
    return VideoRequested(
        event_id=f"{ONDEMAND_PREFIX}{vid}", occurred_at=now, request_key=key, sku=body.sku or DEFAULT_SKU,
        variant_id=f"{ONDEMAND_PREFIX}{vid}", lane=Lane.HOT, model=model, prompt=prompt, image_url=body.image_url,
        params=params, title=prompt.positive[:300], source_event_id=f"{ONDEMAND_PREFIX}{vid}",
    )
