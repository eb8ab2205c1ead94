"""Errors of the listing API: every refusal is a 4xx with ``{reason, message}``, never a traceback.

* ``ApiProblem`` — raised by handlers and the service; carries the status, a reason code and a message.
* Request validation (FastAPI) — 400 ``invalid_json`` for a body that is not JSON, 400
  ``idempotency_key_required`` / ``invalid_idempotency_key`` for that header, else 422 ``schema_violation``
  naming the field.
* Routing — 404 ``not_found``, 405 ``method_not_allowed``.
* ``BodyLimit`` — bodies over ``Settings.api_max_body_bytes`` get 413 ``body_too_large``, whether they
  announce their length or stream it chunked; nothing beyond the limit is read.
* Anything else — logged with its traceback on the server, answered 500 ``internal_error`` without details.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

JSON = "application/json"
_HTTP_REASONS = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


def json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


class ApiProblem(Exception):
    """A request the API refuses (4xx) or cannot serve now (503)."""

    def __init__(self, status: int, reason: str, message: str, *, field: str | None = None,
                 rule: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.field = field
        self.rule = rule

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"reason": self.reason, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        if self.rule is not None:
            body["rule"] = self.rule
        return body


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


class BodyLimit:
    """ASGI middleware: refuse bodies over ``limit`` bytes (413) from Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            problem = ApiProblem(413, "body_too_large", f"the request body is larger than {self.limit} bytes")
            await json_response(413, problem.body())(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)


def _field(loc: tuple) -> str:
    return ".".join(str(part) for part in loc[1:]) or str(loc[0]) if loc else "body"


def validation_problem(exc: RequestValidationError) -> ApiProblem:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": "value_error"}
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return ApiProblem(400, "invalid_json", f"the body is not JSON: {first.get('msg', '')}")
    if loc[:1] == ("header",) and str(loc[-1]).lower() == "idempotency-key":
        if first.get("type") == "missing":
            return ApiProblem(400, "idempotency_key_required", "send an Idempotency-Key header (1-128 characters "
                              "of letters, digits and ._:-)", field="Idempotency-Key")
        return ApiProblem(400, "invalid_idempotency_key", "the Idempotency-Key header must be 1-128 characters of "
                          "letters, digits and ._:-, starting with a letter or digit", field="Idempotency-Key")
    name = _field(loc)
    return ApiProblem(422, "schema_violation", f"{name}: {first.get('msg', 'invalid')}", field=name)


def install(app: FastAPI) -> None:
    """The exception handlers that turn every failure into an ``ApiError`` body."""

    @app.exception_handler(ApiProblem)
    async def _problem(request: Request, exc: ApiProblem) -> Response:
        return json_response(exc.status, exc.body())

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        problem = validation_problem(exc)
        return json_response(problem.status, problem.body())

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        reason = _HTTP_REASONS.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else reason.replace("_", " ")
        return json_response(exc.status_code, {"reason": reason, "message": message}, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return json_response(500, {"reason": "internal_error", "message": "the API failed on this request"})
