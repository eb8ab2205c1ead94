from pathlib import Path

import orjson

from producers.emit import parse_lines, resolve_topic

CATALOG = Path(__file__).parents[1] / "data" / "catalog.jsonl"


def test_invalid_lines_are_reported_with_line_numbers(tmp_path):
    good = CATALOG.read_bytes().splitlines()[:2]
    bad_type = orjson.loads(good[0]) | {"hot": "yes"}
    path = tmp_path / "feed.jsonl"
    path.write_bytes(b"\n".join([good[0], b"{oops", b"", orjson.dumps(bad_type), good[1]]) + b"\n")
    events, errors = parse_lines(resolve_topic("product.created"), path, max_bytes=1 << 20)
    assert [e.sku for e in events] == [orjson.loads(good[0])["sku"], orjson.loads(good[1])["sku"]]
    assert [(e.line, e.reason) for e in errors] == [(2, "invalid_json"), (4, "schema_violation")]


def test_bundled_catalog_is_valid():
    events, errors = parse_lines(resolve_topic("product.created"), CATALOG, max_bytes=1 << 20)
    assert errors == []
    assert len(events) >= 8
    assert len({e.category for e in events}) >= 4
