"""Generate the checked-in contract files from the models: one JSON Schema per topic, an AsyncAPI 3 document
and the listing API's OpenAPI document (``api.openapi``).

``python -m schemas.export`` rewrites them; ``tests/unit/test_schemas.py`` fails when they drift.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

from schemas.events import SCHEMA_VERSION
from schemas.topics import ALL_TOPICS, INPUT_TOPICS, Topic

OUT_DIR = Path(__file__).parent / "generated"


def json_schema(topic: Topic) -> dict:
    schema = topic.model.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"skuvid:{topic.name}:v1", **schema}


def asyncapi() -> dict:
    consumed = {t.name for t in INPUT_TOPICS}
    channels, messages, operations = {}, {}, {}
    for topic in ALL_TOPICS:
        name = topic.model.__name__
        channel_id = topic.name.replace(".", "_").replace("-", "_")
        messages[name] = {
            "name": name,
            "title": name,
            "summary": (topic.model.__doc__ or "").strip().splitlines()[0],
            "contentType": "application/json",
            "payload": {"$ref": f"./{topic.name}.schema.json"},
            "bindings": {"kafka": {"key": {"type": "string", "description": "SKU (or promo id)"}}},
        }
        channels[channel_id] = {
            "address": topic.name,
            "description": topic.description,
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "bindings": {"kafka": {"topic": topic.name, "partitions": topic.partitions}},
        }
        action = "receive" if topic.name in consumed else "send"
        operations[f"{action}_{channel_id}"] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "messages": [{"$ref": f"#/channels/{channel_id}/messages/{name}"}],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "skuvid",
            "version": f"{SCHEMA_VERSION}.0.0",
            "description": "Catalog events in, labelled AI product videos out.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def rendered() -> dict[str, bytes]:
    """File name -> exact bytes of every generated contract file."""
    opts = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE
    files = {f"{t.name}.schema.json": orjson.dumps(json_schema(t), option=opts) for t in ALL_TOPICS}
    files["asyncapi.json"] = orjson.dumps(asyncapi(), option=opts)
    from api.openapi import FILE_NAME, rendered as openapi  # noqa: PLC0415 - the listing API's HTTP contract

    files[FILE_NAME] = openapi()
    return files


def write(out_dir: Path = OUT_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, content in rendered().items():
        path = out_dir / name
        path.write_bytes(content)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT_DIR):
        print(p)
