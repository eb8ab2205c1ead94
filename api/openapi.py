"""The listing API's OpenAPI document, generated from ``api.app`` and checked in as
``schemas/generated/openapi.json`` (``make schemas`` rewrites it with the event schemas; a test fails on drift)."""

from __future__ import annotations

from typing import Any

import orjson

FILE_NAME = "openapi.json"


def document() -> dict[str, Any]:
    from api.app import create_app  # noqa: PLC0415 - FastAPI is loaded only when the document is wanted

    return create_app(None).openapi()


def rendered() -> bytes:
    """The exact bytes of the checked-in file."""
    return orjson.dumps(document(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE)
