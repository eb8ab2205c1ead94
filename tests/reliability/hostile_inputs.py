"""Seeded generator of hostile input records for the planner's and the renderer's topics.

``generate(n, seed=…, canary_port=…, request=…)`` returns ``n`` records (``Hostile``: topic, key, value, the
kind, and the ids that let an outcome be traced back to it). The same seed gives the same records. Kinds:

* bytes that are not JSON: invalid UTF-8 (lone continuation bytes, overlong forms, encoded surrogates),
  truncated JSON, random garbage, empty values and tombstones (``None``);
* JSON that is not the schema: non-objects, deeply nested arrays/objects (up to 100k levels), wrong types for
  every field, huge strings (10 KB – 500 KB, a few past the 1 MiB record limit), NaN/huge numbers, bad SKUs;
* schema-valid products with control, bidi, zero-width and NUL characters (valid-but-harmless: they get a
  normal request or a refusal);
* schema-valid products and requests whose ``image_url`` aims at the loopback canary in every form a naive
  check misses — 6to4 ``2002:7f00:1::1``, NAT64 ``64:ff9b::7f00:1``, Teredo, ``::ffff:127.0.0.1``,
  ``::127.0.0.1``, decimal ``2130706433``, octal ``0177.0.0.1``, hex ``0x7f000001``, fullwidth digits,
  ``localhost``, ``0.0.0.0``, userinfo tricks, other schemes, ``file:`` paths outside the image root.

Every SSRF form comes once first (when ``n`` is at least twice their number), the rest is drawn by kind.
Keys are random too (None, invalid UTF-8, 10 KB). Valid records get unique SKUs, event ids and request keys.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

import orjson

from schemas.events import VideoRequested
from schemas.topics import PRODUCT_CREATED, PRODUCT_UPDATED, VIDEO_REQUESTED

MAX_RECORD_BYTES = 1_048_576
CONTROL = "\x00\x01\x07\x08\x0b\x0c\x1b\x7f\u0085\u2028\u2029"
BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad"


@dataclass(frozen=True)
class Hostile:
    topic: str
    key: bytes | None
    value: bytes | None
    kind: str
    event_id: str | None = None  # set when the record is a schema-valid product (traced by source_event_id)
    request_key: str | None = None  # set when the record is a schema-valid request (traced by request_key)


def ssrf_urls(port: int) -> list[str]:
    """Image URLs that all end at a loopback (or otherwise private) address, the canary's port included."""
    path = "/canary.png"
    hosts = [
        "127.0.0.1", "localhost", "127.1", "127.0.1", "0.0.0.0", "0", "127.0.0.1.", "2130706433", "0177.0.0.1",
        "0x7f000001", "0x7f.0.0.1", "0x7F.0x0.0x0.0x1", "017700000001", "[::1]", "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]", "[0:0:0:0:0:ffff:127.0.0.1]", "[::127.0.0.1]", "[::7f00:1]", "[2002:7f00:1::1]",
        "[2002:7f00:0001:0000:0000:0000:0000:0001]", "[64:ff9b::7f00:1]", "[64:ff9b::127.0.0.1]",
        "[64:ff9b:1::7f00:1]", "[2001:0:4136:e378:8000:63bf:80ff:fffe]", "[2001::80ff:fffe]", "[::]",
        "１２７.０.０.１", "①②⑦.⓪.⓪.①", "127.0.0.1%2f", "ip6-localhost", "localhost.localdomain",
    ]
    urls = [f"http://{h}:{port}{path}" for h in hosts]
    urls += [
        f"https://127.0.0.1:{port}{path}", f"HTTP://127.0.0.1:{port}{path}", f"http://user:pw@127.0.0.1:{port}{path}",
        f"http://example.com@127.0.0.1:{port}{path}", f"http://127.0.0.1:{port}#@example.com/x.png",
        f"http://127.0.0.1:{port}?@example.com/x.png", f"http://[::ffff:127.0.0.1]:{port}/%2e%2e/x.png",
        f"http://[fe80::1%25lo]:{port}{path}", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/x.png",
        "http://192.168.1.1/x.png", "http://172.16.0.1/x.png", "http://100.64.0.1/x.png", "http://[fd00::1]/x.png",
        "http://[fc00::1]/x.png", "http://[ff02::1]/x.png", "http://224.0.0.1/x.png", "http://255.255.255.255/x.png",
        f"gopher://127.0.0.1:{port}/_GET%20/", f"ftp://127.0.0.1:{port}/x.png", f"dict://127.0.0.1:{port}/x",
        f"ldap://127.0.0.1:{port}/", "file:///etc/passwd", "file://localhost/etc/shadow", "file:///proc/self/environ",
        "file:tests/../../../../../etc/passwd", "file:///dev/zero", "file:///dev/urandom", "file://evil.example/x.png",
        "data:image/png;base64,iVBORw0KGgo=", "javascript:alert(1)", f"//127.0.0.1:{port}{path}",
        f" http://127.0.0.1:{port}{path}", f"http:\\\\127.0.0.1:{port}\\canary.png", f"http://127.0.0.1:{port}\x00.png",
        f"http://127.0.0.1:{port}/\r\nHost: evil", "http://", "http://:80/x.png", "http://[::1/x.png",
        "http://a:99999/x.png",
    ]
    return urls


def _junk_text(rng: random.Random, n: int) -> str:
    alphabet = CONTROL + BIDI + INVISIBLE + "aZ9 中文🙂\\\"'<>&%$#{}[]"
    return "".join(rng.choice(alphabet) for _ in range(n))


def _product(rng: random.Random, i: int, **over) -> dict:
    product = {
        "schema_version": 1, "event_id": f"hostile-{i}", "occurred_at": "2026-12-01T09:00:00+08:00",
        "sku": f"H{i:06d}", "title": rng.choice(["Ceramic mug", "降噪蓝牙耳机", "Running shoes", "北欧实木餐椅"]),
        "category": rng.choice(["kitchen", "3c", "sports", "家具", "unknown-cat"]),
        "selling_points": ["Dishwasher safe"], "attributes": {"color": "white"}, "locale": "en-US", "hot": False,
    }
    product.update(over)
    return product


def _request(template: VideoRequested, i: int, **over) -> dict:
    request = template.model_dump(mode="json")
    key = hashlib.sha256(f"hostile-request-{i}".encode()).hexdigest()
    request.update({"event_id": f"req-hostile-{i}", "request_key": key, "sku": f"HR{i:06d}",
                    "source_event_id": f"hostile-src-{i}", "image_url": None})
    request.update(over)
    return request


def _nested(rng: random.Random) -> bytes:
    depth = rng.choices([64, 600, 1100, 5000, 100_000], weights=[30, 30, 20, 15, 5])[0]
    if rng.random() < 0.5:
        return b"[" * depth + b"]" * depth
    inner = b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"schema_version":1,"event_id":"x","attributes":' + inner + b"}"


def _invalid_utf8(rng: random.Random, valid: bytes) -> bytes:
    bad = rng.choice([b"\xff", b"\xfe\xff", b"\x80", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                      b"\xc3", b"\xf0\x9f\x98"])
    cut = rng.randrange(1, len(valid))
    return valid[:cut] + bad + valid[cut:]


def _wrong_types(rng: random.Random, base: dict) -> dict:
    field = rng.choice(list(base))
    bad = rng.choice([None, 12345, -1, 1.5e308, True, "yes", [], {}, ["a"], {"a": 1}, "", "x" * 70])
    if field in ("event_id", "request_key"):  # the ids that trace a record stay unique or become invalid
        bad = rng.choice([None, 12345, True, [], {}, ""])
    if field == "sku":
        bad = rng.choice([None, 42, "", "bad sku!", "../../etc", "x" * 65, "-leading", "\u202e1234"])
    return {**base, field: bad}


def _huge(rng: random.Random, base: dict, oversized: bool) -> bytes:
    size = rng.randrange(MAX_RECORD_BYTES + 1, MAX_RECORD_BYTES + 400_000) if oversized else rng.choices(
        [5_000, 20_000, 100_000, 500_000], weights=[50, 30, 15, 5])[0]
    field = rng.choice([k for k in base if isinstance(base[k], str)] or ["title"])
    return orjson.dumps({**base, field: "A" * size})


def _for_topic(rng: random.Random, i: int, topic: str, kind: str, template: VideoRequested, port: int,
               oversized_left: list[int]) -> Hostile:
    is_request = topic == VIDEO_REQUESTED.name
    base = _request(template, i) if is_request else _product(rng, i)
    valid = orjson.dumps(base)
    trace = {"request_key": base["request_key"]} if is_request else {"event_id": base["event_id"]}
    key = rng.choice([None, b"", base["sku"].encode(), rng.randbytes(8), b"\xff\xfe\x00", b"k" * 10_000])
    if kind == "invalid_utf8":
        return Hostile(topic, key, _invalid_utf8(rng, valid), kind, **trace)
    if kind == "truncated_json":
        return Hostile(topic, key, valid[: rng.randrange(0, len(valid))], kind, **trace)
    if kind == "garbage":
        return Hostile(topic, key, rng.randbytes(rng.randrange(0, 2000)), kind)
    if kind == "empty":
        value = rng.choice([None, b"", b" ", b"\n", b"null", b"{}"])
        return Hostile(topic, key if value is not None or key is not None else b"tombstone", value, kind)
    if kind == "not_object":
        return Hostile(topic, key, rng.choice([b"[]", b"[1,2]", b"42", b'"text"', b"true", b"1e999", b"NaN",
                                               b"-0", b'{"a":1}{"b":2}', b"{'sku': 'single-quoted'}"]), kind)
    if kind == "deep_nesting":
        return Hostile(topic, key, _nested(rng), kind, **trace)
    if kind == "wrong_types":
        return Hostile(topic, key, orjson.dumps(_wrong_types(rng, base)), kind, **trace)
    if kind == "bad_numbers":
        text = json.dumps(base).replace('"schema_version": 1', rng.choice(
            ['"schema_version": 1e400', '"schema_version": NaN', '"schema_version": 1.0',
             '"schema_version": 99999999999999999999999999', '"schema_version": -Infinity']))
        return Hostile(topic, key, text.encode(), kind, **trace)
    if kind == "huge_string":
        oversized = oversized_left[0] > 0 and rng.random() < 0.3
        if oversized:
            oversized_left[0] -= 1
        return Hostile(topic, key, _huge(rng, base, oversized), "oversized" if oversized else kind, **trace)
    if kind == "control_bidi":
        junk = _junk_text(rng, rng.randrange(1, 120))
        if is_request:
            over = {"title": junk[:300], "prompt": {**base["prompt"], "positive": (junk + " product")[:4000]}}
            record = _request(template, i, **over)
            return Hostile(topic, key, orjson.dumps(record), kind, request_key=record["request_key"])
        record = _product(rng, i, title=junk[:300], brand=_junk_text(rng, 20), selling_points=[junk[:500]],
                          attributes={_junk_text(rng, 8): _junk_text(rng, 30)})
        return Hostile(topic, key, orjson.dumps(record), kind, event_id=record["event_id"])
    if kind == "ssrf":
        url = rng.choice(ssrf_urls(port))
        if is_request:
            record = _request(template, i, image_url=url)
            return Hostile(topic, key, orjson.dumps(record), kind, request_key=record["request_key"])
        record = _product(rng, i, image_url=url[:2048])
        return Hostile(topic, key, orjson.dumps(record), kind, event_id=record["event_id"])
    if kind == "other_model":
        record = _request(template, i, model="someone/else")
        return Hostile(topic, key, orjson.dumps(record), kind, request_key=record["request_key"])
    if kind == "bad_params":
        params = {**base["params"], **rng.choice([{"num_frames": 50}, {"width": 64, "num_frames": 6},
                                                   {"steps": 0}, {"seed": -1}, {"width": 33}, {"fps": 0}])}
        record = _request(template, i, params=params)
        return Hostile(topic, key, orjson.dumps(record), kind, request_key=record["request_key"])
    if kind == "harmless":
        if is_request:
            record = _request(template, i)
            return Hostile(topic, key, orjson.dumps(record), kind, request_key=record["request_key"])
        record = _product(rng, i, unknown_field={"nested": [1, 2, {"x": "y"}]}, price=9.99)
        return Hostile(topic, key, orjson.dumps(record), kind, event_id=record["event_id"])
    raise ValueError(kind)


# Weights (percent of each topic's records). Schema-valid kinds (control_bidi, harmless, ssrf, …) cost a
# render or an image check each; they are kept few so 10,000 records fit the suite's time budget.
PRODUCT_KINDS = {"invalid_utf8": 12, "truncated_json": 12, "garbage": 8, "empty": 4, "not_object": 6,
                 "deep_nesting": 5, "wrong_types": 20, "bad_numbers": 4, "huge_string": 3, "control_bidi": 3,
                 "ssrf": 12, "harmless": 1}
REQUEST_KINDS = {"invalid_utf8": 12, "truncated_json": 12, "garbage": 8, "empty": 4, "not_object": 6,
                 "deep_nesting": 5, "wrong_types": 20, "bad_numbers": 4, "huge_string": 3, "control_bidi": 2,
                 "ssrf": 12, "other_model": 2, "bad_params": 3, "harmless": 1}


def generate(n: int, *, seed: int, canary_port: int, request: VideoRequested, max_oversized: int = 10) -> list[Hostile]:
    """``n`` hostile records: first every SSRF URL form once (alternately a request and a product, when ``n``
    leaves room for them twice over), then random kinds — 60 % for the planner's topics, 40 % for
    ``video.requested``."""
    rng = random.Random(seed)
    oversized_left = [max_oversized]
    records = []
    urls = ssrf_urls(canary_port) if n >= 2 * len(ssrf_urls(canary_port)) else []
    for i, url in enumerate(urls):
        topic = VIDEO_REQUESTED.name if i % 2 == 0 else rng.choice([PRODUCT_CREATED.name, PRODUCT_UPDATED.name])
        if topic == VIDEO_REQUESTED.name:
            record = _request(request, i, image_url=url)
            records.append(Hostile(topic, record["sku"].encode(), orjson.dumps(record), "ssrf",
                                   request_key=record["request_key"]))
        else:
            record = _product(rng, i, image_url=url[:2048])
            records.append(Hostile(topic, record["sku"].encode(), orjson.dumps(record), "ssrf",
                                   event_id=record["event_id"]))
    for i in range(len(urls), n):
        if rng.random() < 0.6:
            topic = rng.choice([PRODUCT_CREATED.name, PRODUCT_UPDATED.name])
            kind = rng.choices(list(PRODUCT_KINDS), weights=list(PRODUCT_KINDS.values()))[0]
        else:
            topic = VIDEO_REQUESTED.name
            kind = rng.choices(list(REQUEST_KINDS), weights=list(REQUEST_KINDS.values()))[0]
        records.append(_for_topic(rng, i, topic, kind, request, canary_port, oversized_left))
    return records
