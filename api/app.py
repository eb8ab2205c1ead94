"""The listing API's routes (FastAPI). Handlers only validate, call ``ApiService`` and shape the answer.

The hot path (``GET /v1/skus/{sku}/video``) answers with pre-serialised orjson bytes; the declared response
models document the bodies (``schemas/generated/openapi.json``) without validating each answer again.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Header, Path, Query
from starlette.responses import Response

from api.errors import JSON, ApiProblem, BodyLimit, install, json_response
from api.experiments import ExperimentReports
from api.index import Missing, as_datetime
from api.models import (
    IDEMPOTENCY_KEY_PATTERN,
    ApiError,
    LookupMiss,
    PromoStatus,
    VideoAccepted,
    VideoCreate,
    VideoLookup,
    VideoStatus,
)
from api.service import ApiService
from review.routes import review_router

SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
VERSION = "1.0.0"
DESCRIPTION = """What a product listing plays: the promo video inside its window, else the daily one, the A/B
arm chosen by `experiments.assignment` (reproducible by listing services); videos not rendered yet are
rendered on first view. On-demand renders go through the same safety gate and renderers. Every error is
`{reason, message}` with a machine-readable reason."""

ERRORS = {400: {"model": ApiError}, 413: {"model": ApiError}, 422: {"model": ApiError}, 503: {"model": ApiError}}


def _dt(ts: float | None) -> str | None:
    value = as_datetime(ts)
    return value.isoformat() if value is not None else None


def create_app(service: ApiService | None, *, max_body_bytes: int = 16_384) -> FastAPI:
    """The ASGI app over ``service`` (None: only for generating the OpenAPI document)."""
    app = FastAPI(title="skuvid listing API", version=VERSION, description=DESCRIPTION, openapi_url="/openapi.json",
                  docs_url=None, redoc_url=None)
    install(app)
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    def svc() -> ApiService:
        if service is None:
            raise ApiProblem(503, "not_serving", "this app only describes the API")
        return service

    @app.get("/v1/skus/{sku}/video", response_model=VideoLookup, tags=["listing"],
             responses={404: {"model": LookupMiss}, **ERRORS}, summary="The video a listing plays now")
    async def sku_video(
        sku: Annotated[str, Path(min_length=1, max_length=64, pattern=SKU_PATTERN)],
        user: Annotated[str | None, Query(min_length=1, max_length=128, description="User or session id: "
                                          "the A/B unit.")] = None,
        channel: Annotated[str | None, Query(max_length=64, pattern=LABEL_PATTERN, description="Where the listing "
                                             "shows (app, web …); accepted for the listing's logs.")] = None,
        region: Annotated[str | None, Query(max_length=64, pattern=LABEL_PATTERN, description="Market; a locale "
                                            "(zh-CN, en-US) prefers variants in its language.")] = None,
    ) -> Response:
        result = svc().lookup(sku, user=user, region=region)
        if isinstance(result, Missing):
            return json_response(404, {"status": result.status, "reason": result.reason, "message": result.message})
        video = result.video
        body: dict[str, Any] = {
            "sku": result.sku, "variant_id": result.variant_id, "video_url": video.video_url,
            "poster_url": video.poster_url, "feed_video_url": video.feed_video_url,
            "request_key": result.request_key, "promo_id": result.promo_id, "valid_until": _dt(result.valid_until),
            "experiment_id": result.experiment_id, "ai_generated": True,
        }
        return Response(orjson.dumps(body), media_type=JSON)

    @app.post("/v1/videos", status_code=202, response_model=VideoAccepted, tags=["on-demand"],
              responses={409: {"model": ApiError}, **ERRORS}, summary="Render a video on demand")
    async def create_video(
        body: VideoCreate,
        idempotency_key: Annotated[str, Header(alias="Idempotency-Key", pattern=IDEMPOTENCY_KEY_PATTERN,
                                               description="Same key, same render (retries are safe).")],
    ) -> Response:
        vid = await svc().submit(body, idempotency_key)
        url = f"/v1/videos/{vid}"
        return json_response(202, {"id": vid, "status_url": url}, headers={"Location": url})

    @app.get("/v1/videos/{video_id}", response_model=VideoStatus, tags=["on-demand"],
             responses={404: {"model": ApiError}, **ERRORS}, summary="Status of an on-demand render")
    async def video_status(video_id: Annotated[str, Path(pattern=r"^[0-9a-f]{24}$")]) -> Response:
        report = await svc().video_status(video_id)
        if report is None:
            raise ApiProblem(404, "unknown_video", f"no on-demand render {video_id}")
        body: dict[str, Any] = {"id": video_id, "status": report.status}
        if report.video is not None:
            body |= {"video_url": report.video.video_url, "poster_url": report.video.poster_url}
        if report.failure is not None:
            body |= {"reason": report.failure.reason, "message": report.failure.message}
        return json_response(200, body)

    @app.get("/v1/promos/{promo_id}", response_model=PromoStatus, tags=["campaigns"],
             responses={404: {"model": ApiError}, **ERRORS}, summary="How far a campaign's videos are")
    async def promo_status(promo_id: Annotated[str, Path(min_length=1, max_length=64)]) -> Response:
        report = svc().promo_status(promo_id)
        if report is None:
            raise ApiProblem(404, "unknown_promo", f"no promo {promo_id} in the index")
        return json_response(200, {
            "promo_id": report.promo_id, "targeted": report.targeted, "planned": report.planned,
            "ready": report.ready, "failed": report.failed, "unknown_skus": report.unknown_skus,
            "eta_s": report.eta_s, "starts_at": _dt(report.starts_at), "ends_at": _dt(report.ends_at),
        })

    reports = ExperimentReports(service.settings) if service is not None else None

    @app.get("/v1/experiments/{experiment_id}", tags=["experiments"], responses={404: {"model": ApiError}, **ERRORS},
             summary="An A/B experiment's report: each arm against control, with intervals and p-values")
    async def experiment_report(experiment_id: Annotated[str, Path(min_length=1, max_length=64)]) -> Response:
        if reports is None:
            raise ApiProblem(503, "not_serving", "this app only describes the API")
        return json_response(200, await reports.report(experiment_id))

    # The review desk (/review, /v1/review/report): outside the listing API's OpenAPI document; 404 when off.
    app.include_router(review_router(lambda: service.review if service is not None else None))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return json_response(200, {"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        if service is not None and service.is_ready():
            return json_response(200, {"status": "ok"})
        return json_response(503, {"status": "fail", "reason": "index_loading"})

    return app
