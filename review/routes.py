"""HTTP routes of the review desk on the listing API's port (not part of the listing API's OpenAPI document).

* ``GET /review`` — the review page (``review.page``) with the video the reviewer holds or newly claims;
* ``GET /review/api/next`` — the same as JSON (tools, tests);
* ``POST /review/api/verdict`` — ``{request_key, claim_id, verdict, reason, note}`` (JSON only);
* ``GET /v1/review/report`` — approval rates (``?since=DATE&until=DATE&format=json|html``).

Every route needs a reviewer (``review.auth``): 401 with a basic-auth challenge otherwise. With review off
(``Settings.review_enabled`` false) they answer 404 ``review_disabled``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import HTMLResponse, Response

from api.errors import ApiProblem, json_response
from review.auth import REALM
from review.desk import Opened, ReviewDesk, VerdictBody
from review.page import content_security_policy, render_page
from review.report import build_report, render_html, report_json, rows_from

PAGE_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def review_router(desk_of: Callable[[], ReviewDesk | None]) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    def desk() -> ReviewDesk:
        found = desk_of()
        if found is None:
            raise ApiProblem(404, "review_disabled", "review is not enabled on this API (SKUVID_REVIEW_ENABLED)")
        return found

    def reviewer(request: Request, found: ReviewDesk) -> str | None:
        return found.reviewers.identify(request.headers.get("authorization"))

    def challenge() -> Response:
        return json_response(401, {"reason": "auth_required", "message": "sign in as a reviewer: basic auth id:token "
                                   "or Authorization: Bearer token"}, headers={"WWW-Authenticate": REALM})

    @router.get("/review")
    async def page(request: Request) -> Response:
        found = desk()
        who = reviewer(request, found)
        if who is None:
            return challenge()
        opened = await found.next_for(who)
        waiting, in_review = found.depth()
        nonce = secrets.token_urlsafe(16)
        return HTMLResponse(render_page(opened, reviewer=who, waiting=waiting, in_review=in_review, nonce=nonce),
                            headers={**PAGE_HEADERS, "Content-Security-Policy": content_security_policy(nonce)})

    @router.get("/review/api/next")
    async def next_video(request: Request) -> Response:
        found = desk()
        who = reviewer(request, found)
        if who is None:
            return challenge()
        opened = await found.next_for(who)
        waiting, in_review = found.depth()
        return json_response(200, {"reviewer": who, "waiting": waiting, "in_review": in_review,
                                   "video": _opened_json(opened) if opened else None}, headers=PAGE_HEADERS)

    @router.post("/review/api/verdict")
    async def verdict(request: Request, body: VerdictBody) -> Response:
        found = desk()
        who = reviewer(request, found)
        if who is None:
            return challenge()
        outcome = await found.decide(who, body)
        withdrawn = outcome.withdrawn
        return json_response(200, {
            "status": "recorded", "event_id": outcome.reviewed.event_id, "verdict": outcome.reviewed.verdict.value,
            "withdrawn": withdrawn is not None,
            "action": withdrawn.action.value if withdrawn is not None else None,
            "rerender_request_key": withdrawn.rerender.request_key if withdrawn and withdrawn.rerender else None,
        })

    @router.get("/v1/review/report")
    async def report(
        request: Request,
        since: Annotated[date | None, Query(description="First day included (UTC).")] = None,
        until: Annotated[date | None, Query(description="Last day included (UTC).")] = None,
        format: Annotated[Literal["json", "html"], Query()] = "json",  # noqa: A002 - the query parameter's name
    ) -> Response:
        found = desk()
        if reviewer(request, found) is None:
            return challenge()
        found.require_ready()
        rows = rows_from(found.book.verdicts.values(), since=_start(since), until=_end(until))
        built = build_report(rows, since=since, until=until)
        if format == "html":
            return HTMLResponse(render_html(built), headers=PAGE_HEADERS)
        return json_response(200, report_json(built))

    return router


def _start(day: date | None) -> datetime | None:
    return datetime.combine(day, time.min, UTC) if day else None


def _end(day: date | None) -> datetime | None:
    return datetime.combine(day, time.max, UTC) if day else None


def _opened_json(opened: Opened) -> dict[str, Any]:
    ready = opened.item.ready
    return {
        "request_key": ready.request_key, "claim_id": opened.claim.claim_id, "sku": ready.sku,
        "variant_id": ready.variant_id, "video_url": ready.video_url, "poster_url": ready.poster_url,
        "prompt": ready.prompt, "template_id": ready.template_id, "template_version": opened.item.template_version,
        "style": opened.style, "model": ready.provenance.model, "seed": ready.provenance.seed,
        "causes": sorted(c.value for c in opened.item.causes), "quality": ready.quality.model_dump(mode="json"),
        "product": opened.product.model_dump(mode="json"),
        "lease_until": datetime.fromtimestamp(opened.claim.lease_until, UTC).isoformat(),
    }
