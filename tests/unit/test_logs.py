"""skuvid.logs: JSON lines with bound context, no ANSI codes, rate-limited repeats, redacted secrets."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sys

import pytest
import structlog
from aiokafka import ConsumerRecord

from skuvid.logs import RateLimitFilter, bind_event, bind_record, configure_logging
from skuvid.settings import Settings

SECRET = "s3cr3t-sasl-pa55"
S3_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
ANSI = re.compile(r"\x1b")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logs():
    """Configure JSON logging into a buffer; give back a function returning the parsed lines so far."""
    saved_root = logging.getLogger().handlers[:], logging.getLogger().level
    saved_hook = sys.excepthook
    buffer = io.StringIO()
    clock = FakeClock()

    def configure(**kwargs) -> None:
        settings = kwargs.pop("settings", Settings(log_format="json", kafka_sasl_password=SECRET))
        kwargs.setdefault("ml_libraries", False)  # importing diffusers takes seconds: one test does
        configure_logging(settings, stream=buffer, clock=clock, **kwargs)

    def lines() -> list[dict]:
        text = buffer.getvalue()
        return [json.loads(line) for line in text.splitlines()]

    configure()
    lines.configure = configure
    lines.clock = clock
    lines.text = buffer.getvalue
    yield lines
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in saved_root[0]:
        root.addHandler(handler)
    root.setLevel(saved_root[1])
    sys.excepthook = saved_hook
    logging.captureWarnings(False)
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def test_stdlib_and_structlog_lines_are_json_with_the_common_fields(logs):
    logging.getLogger("consumers.renderer").info("render start %s %s", "SKU-1", "abc")
    structlog.get_logger("skuvid.demo").warning("uploaded", bytes=1234)
    first, second = logs()
    assert first["message"] == "render start SKU-1 abc"
    assert (first["level"], first["logger"]) == ("info", "consumers.renderer")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", first["timestamp"])
    assert list(first)[:4] == ["timestamp", "level", "logger", "message"]
    assert (second["message"], second["bytes"], second["level"], second["logger"]) == (
        "uploaded", 1234, "warning", "skuvid.demo")
    assert "event" not in second


def test_bound_record_fields_appear_on_every_line_and_are_gone_after_the_block(logs):
    record = ConsumerRecord("video.requested", 2, 41, 0, 0, b"k", b"v", None, 1, 1, [])

    class Request:
        event_id, sku, request_key = "evt-9", "SKU-1001", "ab" * 32

    with bind_record(record):
        logging.getLogger("aiokafka").info("before decode")
        bind_event(Request())
        structlog.get_logger("consumers.renderer").info("decoded")
    logging.getLogger("consumers.renderer").info("next record")
    before, decoded, after = logs()
    assert (before["topic"], before["partition"], before["offset"]) == ("video.requested", 2, 41)
    assert "sku" not in before
    assert decoded | {"sku": "SKU-1001", "event_id": "evt-9", "request_key": "ab" * 32} == decoded
    assert not {"topic", "partition", "offset", "sku", "event_id", "request_key"} & set(after)


def test_an_inner_record_replaces_the_outer_one_until_its_block_ends_and_a_line_keeps_its_own_fields(logs):
    outer = ConsumerRecord("product.created", 1, 7, 0, 0, b"k", b"v", None, 1, 1, [])
    inner = ConsumerRecord("promo.started", 0, 3, 0, 0, b"k", b"v", None, 1, 1, [])

    class Product:
        event_id, sku, request_key = "evt-1", "SKU-1", None

    with bind_record(outer):
        bind_event(Product())
        with bind_record(inner):
            logging.getLogger("consumers.planner").info("inner")
        structlog.get_logger("consumers.planner").info("outer again", sku="SKU-explicit")
    inner_line, outer_line = logs()
    assert (inner_line["topic"], inner_line["offset"]) == ("promo.started", 3)
    assert "sku" not in inner_line and "request_key" not in inner_line
    assert (outer_line["topic"], outer_line["offset"], outer_line["event_id"]) == ("product.created", 7, "evt-1")
    assert outer_line["sku"] == "SKU-explicit"  # the line's own field, not the bound one
    assert "request_key" not in outer_line  # None is left out


async def test_context_follows_a_job_into_its_worker_thread(logs):
    def in_thread() -> None:
        logging.getLogger("inference.render_job").info("attempt 1")

    with bind_record(sku="SKU-7", request_key="k" * 64):
        await asyncio.to_thread(in_thread)
    (line,) = logs()
    assert (line["sku"], line["request_key"]) == ("SKU-7", "k" * 64)


def test_a_burst_of_one_aiokafka_error_yields_a_handful_of_lines_with_repeated_counts(logs):
    conn = logging.getLogger("aiokafka.conn")
    for i in range(1000):  # 1,000 errors over 50 s (one every 50 ms): a broker that is down
        logs.clock.now = 1000.0 + i * 0.05
        conn.error("Unable connect to node with id %s: %s", i % 3, "[Errno 111] Connection refused")
    lines = logs()
    assert 3 <= len(lines) <= 6, len(lines)
    assert "repeated" not in lines[0]
    assert all(line["repeated"] == 199 for line in lines[1:])
    assert all(line["message"].startswith("Unable connect to node") for line in lines)


def test_rate_limit_keeps_other_templates_levels_and_info_lines(logs):
    log = logging.getLogger("faust.transport")
    for _ in range(50):
        log.warning("Heartbeat failed: %s", "coordinator moved")
        log.error("Heartbeat failed: %s", "coordinator moved")  # other level: its own window
        log.warning("Commit failed for %s", "tp")  # other template
        log.info("Fetching %s", "tp")  # below WARNING: never limited
    messages = [(line["level"], line["message"]) for line in logs()]
    assert messages.count(("warning", "Heartbeat failed: coordinator moved")) == 1
    assert messages.count(("error", "Heartbeat failed: coordinator moved")) == 1
    assert messages.count(("warning", "Commit failed for tp")) == 1
    assert messages.count(("info", "Fetching tp")) == 50


def test_rate_limit_filter_counts_structlog_event_dicts_by_event():
    clock = FakeClock()
    limit = RateLimitFilter(10.0, clock=clock)
    records = [logging.LogRecord("x", logging.WARNING, "f", 1, {"event": "same", "n": i}, None, None) for i in range(3)]
    assert [limit.filter(r) for r in records] == [True, False, False]
    clock.now += 10
    later = logging.LogRecord("x", logging.WARNING, "f", 1, {"event": "same"}, None, None)
    assert limit.filter(later) and later.repeated == 2


def test_no_ansi_codes_and_faust_tables_become_rows(logs):
    logging.getLogger("mode.services").warning("\x1b[1;31m[^Worker]: \x1b[0mStarting... \x1b]0;title\x07done")
    table = (
        "Highwater for active changelog partitions:\n"
        "+Highwater - Active---------+-----------+-----------+\n"
        "| topic                     | partition | highwater |\n"
        "+---------------------------+-----------+-----------+\n"
        "| skuvid-planner-catalog-ch | 0         | 41        |\n"
        "| 〃                        | 1         | 7         |\n"
        "+---------------------------+-----------+-----------+"
    )
    logging.getLogger("faust.tables.recovery").info(table)
    assert not ANSI.search(logs.text())
    coloured, recovery = logs()
    assert coloured["message"] == "[^Worker]: Starting... done"
    assert recovery["message"] == "Highwater for active changelog partitions:"
    assert recovery["table"] == [["topic", "partition", "highwater"], ["skuvid-planner-catalog-ch", "0", "41"],
                                 ["〃", "1", "7"]]


def test_secrets_are_redacted_everywhere_in_a_line(logs):
    logs.configure(secrets=[S3_SECRET])
    log = logging.getLogger("aiokafka.conn")
    log.error("SASL handshake with password=%s failed", SECRET)
    structlog.get_logger("skuvid.storage").warning("s3 config", config={"secret": S3_SECRET, "n": [S3_SECRET]})
    try:
        raise ConnectionError(f"sasl://user:{SECRET}@broker:9093 refused")
    except ConnectionError:
        log.exception("connect failed")
    text = logs.text()
    assert SECRET not in text and S3_SECRET not in text
    first, second, third = logs()
    assert first["message"] == "SASL handshake with password=*** failed"
    assert second["config"] == {"secret": "***", "n": ["***"]}
    assert "sasl://user:***@broker" in third["exception"]


def test_console_format_on_request_redacts_and_auto_is_json_off_a_terminal(logs):
    logs.configure(settings=Settings(log_format="console", kafka_sasl_password=SECRET))
    logging.getLogger("x").warning("pw %s", SECRET)
    text = logs.text()
    assert "pw ***" in text and SECRET not in text and not text.lstrip().startswith("{")
    logs.configure(settings=Settings(log_format="auto"))  # a StringIO is not a terminal
    logging.getLogger("x").warning("now json")
    assert json.loads(logs.text().splitlines()[-1])["message"] == "now json"


def test_configuring_twice_keeps_one_handler_and_a_bad_level_is_refused(logs):
    logs.configure()
    logging.getLogger("x").warning("once")
    assert [line["message"] for line in logs()] == ["once"]
    assert len(logging.getLogger().handlers) == 1
    with pytest.raises(ValueError, match="log level"):
        configure_logging(Settings(log_level="LOUD"), stream=io.StringIO(), ml_libraries=False)


def test_ml_libraries_log_through_the_root_handler_without_progress_bars(logs):
    logs.configure(ml_libraries=True)
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    assert not diffusers_logging.is_progress_bar_enabled()
    assert not transformers_logging.is_progress_bar_enabled()
    transformers_logging.get_logger("transformers.modeling_utils").warning("weights not initialised")
    diffusers_logging.get_logger("diffusers.pipelines").warning("deprecated argument")
    by_logger = {line["logger"]: line["message"] for line in logs()}
    assert by_logger["transformers.modeling_utils"] == "weights not initialised"
    assert by_logger["diffusers.pipelines"] == "deprecated argument"
