"""Process-wide logging: one JSON object per line on stderr, from skuvid and from every library.

``configure_logging`` routes stdlib ``logging`` (aiokafka, faust, mode, diffusers, transformers, skuvid's own
``logging.getLogger(__name__)`` loggers) and ``structlog`` through one ``structlog.stdlib.ProcessorFormatter``
on the root logger. A line carries ``timestamp`` (ISO 8601, UTC), ``level``, ``logger``, ``message`` and the
record context bound with ``bind_record``/``bind_event`` (``event_id``, ``sku``, ``request_key``, ``topic``,
``partition``, ``offset``). What a JSON line never holds: ANSI escape codes, faust's multi-line ASCII tables
(their rows move to a ``table`` field), and any configured secret (replaced by ``***``). Repeated WARNING+
lines of one template are let through once per interval, the next one with ``repeated: N``.

Context lives in ``contextvars``: a binding made in a task is seen by everything that task logs, including
code it runs with ``asyncio.to_thread`` (which copies the context), and by nothing else.
"""

from __future__ import annotations

import contextvars
import importlib
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any

import structlog
from pydantic import SecretStr

from skuvid.settings import Settings

_EVENT_FIELDS = ("event_id", "sku", "request_key")  # of a decoded event
_RECORD_FIELDS = ("topic", "partition", "offset")  # of a consumer record
CONTEXT_KEYS = (*_EVENT_FIELDS, *_RECORD_FIELDS)
REDACTED = "***"
# Libraries that attach their own stderr handler and progress bars; silenced through their own APIs.
ML_LIBRARIES = ("diffusers", "transformers")

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
# faust/mode log tables (terminaltables' AsciiTable, or SingleTable's box drawing on a terminal).
_TABLE_LINE = re.compile(r"^\s*[+|\u2500-\u257f]")
_TABLE_CELL_SPLIT = re.compile(r"[|\u2502\u2503\u2551]")
_HANDLER_NAME = "skuvid"


def configure_logging(
    settings: Settings,
    *,
    stream: IO[str] | None = None,
    secrets: Iterable[str | SecretStr | None] = (),
    rate_limit_s: float = 10.0,
    ml_libraries: bool = True,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Install skuvid's logging on the root logger (replacing any handler there); safe to call again.

    ``stream`` defaults to ``sys.stderr`` at call time. The format is ``settings.log_format``: ``json``,
    ``console``, or ``auto`` (console only when ``stream`` is a terminal). ``secrets`` are redacted from every
    line, in addition to every ``SecretStr`` field of ``settings`` (the SASL password); pass what Settings does
    not hold, e.g. the S3 secret key from the boto credentials. ``rate_limit_s`` is the interval of
    ``RateLimitFilter`` (0 turns it off). ``ml_libraries`` imports diffusers and transformers (seconds, the
    first time) to switch off their progress bars and their own stderr handlers, so their records propagate
    here. ``clock`` is for tests of the rate limit.
    """
    stream = sys.stderr if stream is None else stream
    level = _level(settings.log_level)
    as_json = settings.log_format == "json" or (settings.log_format == "auto" and not _isatty(stream))
    hidden = _secret_values(settings, secrets)

    shared = _shared_processors()
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=_json_processors(hidden) if as_json else _console_processors(hidden, colors=_isatty(stream)),
    ))
    if rate_limit_s > 0:
        handler.addFilter(RateLimitFilter(rate_limit_s, clock=clock))

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if old.get_name() == _HANDLER_NAME:
            old.close()
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # FutureWarning/DeprecationWarning from the ML stack: JSON lines too

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,  # configure_logging may run again (tests, `serve` children)
    )
    if ml_libraries:
        quiet_ml_libraries()
    if as_json:
        sys.excepthook = _log_uncaught


def quiet_ml_libraries() -> None:
    """No tqdm bars from diffusers, transformers and huggingface_hub; their records go to the root logger.

    Both libraries give their package logger a stderr handler of their own and ``propagate = False``:
    without this their warnings would bypass the JSON formatter.
    """
    for name in ML_LIBRARIES:
        library_logging = importlib.import_module(f"{name}.utils.logging")
        library_logging.disable_progress_bar()
        library_logging.disable_default_handler()
        library_logging.enable_propagation()
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    _route_to_root("torch")  # torch._logging's own glog-style stderr handler (e.g. torchao's import warnings)


def _route_to_root(name: str) -> None:
    """Drop a library logger's own handlers and let its records reach the root (JSON) handler."""
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True


# ---- context ---------------------------------------------------------------------------------------------


def record_context(record: Any = None, event: Any = None, **fields: Any) -> dict[str, Any]:
    """Context fields of a consumer record (``topic``, ``partition``, ``offset``: aiokafka's ConsumerRecord,
    faust's Message) and an event (``event_id``, ``sku``, ``request_key``), plus ``fields``; None values are
    left out."""
    context: dict[str, Any] = {}
    for source, keys in ((record, _RECORD_FIELDS), (event, _EVENT_FIELDS)):
        if source is not None:
            for key in keys:
                value = getattr(source, key, None)
                if value is not None:
                    context[key] = value
    for key, value in fields.items():
        if value is not None:
            context[key] = value
    return context


# The record context of the current task: one dict, replaced (never changed in place) by bind_record/bind_event,
# merged into each line by _merge_record_context. One context variable set per record, not one per field: a
# planner binds every record it reads, thousands a second.
_RECORD_CONTEXT: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("skuvid_record_context", default={})


@contextmanager
def bind_record(record: Any = None, event: Any = None, **fields: Any) -> Iterator[None]:
    """Bind a record's context for the ``with`` block; on exit the context is what it was before the block,
    including the event keys bound inside it with ``bind_event`` (so one record's SKU never leaks into the next
    record's lines). The block's context replaces an enclosing one: an outer record's keys are not shown."""
    token = _RECORD_CONTEXT.set(record_context(record, event, **fields))
    try:
        yield
    finally:
        _RECORD_CONTEXT.reset(token)


def bind_event(event: Any) -> None:
    """Add an event's ``event_id``, ``sku`` and ``request_key`` to the current context (inside
    ``bind_record``, once the record has been decoded)."""
    _RECORD_CONTEXT.set({**_RECORD_CONTEXT.get(), **record_context(event=event)})


def _merge_record_context(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """The bound record context into a line (the line's own fields win, as with ``merge_contextvars``)."""
    for key, value in _RECORD_CONTEXT.get().items():
        event_dict.setdefault(key, value)
    return event_dict


# ---- rate limiting --------------------------------------------------------------------------------------


class RateLimitFilter(logging.Filter):
    """One WARNING+ line per (logger, level, message template) per ``interval_s``; the next line let through
    carries ``repeated``, the number suppressed since the last one.

    A broker that is down makes aiokafka log the same "Unable connect to node …" template several times a
    second, for minutes; faust and mode repeat theirs the same way. The template (``record.msg`` before
    %-formatting) is the key, so lines that differ only in their arguments count as repeats.
    A suppressed count is reported only when a later line of that template gets through.
    """

    MAX_KEYS = 4096  # templates are few; a bound anyway, oldest forgotten first

    def __init__(self, interval_s: float = 10.0, *, min_level: int = logging.WARNING,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.min_level = min_level
        self.clock = clock
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, int, str], list[float]] = {}  # key -> [window start, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level:
            return True
        msg = record.msg
        template = str(msg.get("event")) if isinstance(msg, Mapping) else str(msg)  # structlog: an event dict
        key = (record.name, record.levelno, template)
        now = self.clock()
        with self._lock:
            window = self._windows.get(key)
            if window is not None and now - window[0] < self.interval_s:
                window[1] += 1
                return False
            if window is not None and window[1]:
                record.repeated = int(window[1])
            self._windows.pop(key, None)
            self._windows[key] = [now, 0]
            if len(self._windows) > self.MAX_KEYS:
                self._windows.pop(next(iter(self._windows)))
        return True


# ---- processors -----------------------------------------------------------------------------------------


def _shared_processors() -> list[Any]:
    """Run on every entry: structlog calls at call time, stdlib records (``foreign_pre_chain``) at format time,
    both in the logging thread, so the context merged in is the caller's."""
    return [
        _merge_record_context,
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]


def _json_processors(secrets: tuple[str, ...]) -> list[Any]:
    return [
        structlog.stdlib.ExtraAdder(allow=("repeated", *CONTEXT_KEYS)),  # the filter's count, extra={...} fields
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        structlog.processors.format_exc_info,  # traceback text under "exception", redacted below
        _clean_terminal_output,
        _Redactor(secrets),
        _in_reading_order,
        structlog.processors.JSONRenderer(ensure_ascii=False, default=str),
    ]


def _console_processors(secrets: tuple[str, ...], *, colors: bool) -> list[Any]:
    redact = _Redactor(secrets)
    console = structlog.dev.ConsoleRenderer(colors=colors)
    return [
        structlog.stdlib.ExtraAdder(allow=("repeated", *CONTEXT_KEYS)),
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        redact,
        lambda logger, name, event_dict: redact.text(console(logger, name, event_dict)),  # tracebacks too
    ]


def _clean_terminal_output(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Strip ANSI escapes from every string value; move faust's log tables out of the message into rows."""
    for key, value in event_dict.items():
        if isinstance(value, str) and "\x1b" in value:
            event_dict[key] = _ANSI.sub("", value)
    event = event_dict.get("event")
    if isinstance(event, str):
        event_dict["event"] = event = event.rstrip()  # py.warnings lines end in a newline
        if "\n" in event:
            text, rows = _split_table(event)
            if rows:
                event_dict["event"] = text
                event_dict["table"] = rows
    return event_dict


_FIRST_KEYS = ("timestamp", "level", "logger", "message", *CONTEXT_KEYS)


def _in_reading_order(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """``event`` renamed to ``message``; timestamp, level, logger, message and the context keys first."""
    event_dict["message"] = event_dict.pop("event", "")
    ordered = {key: event_dict.pop(key) for key in _FIRST_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


def _split_table(message: str) -> tuple[str, list[list[str]]]:
    """``("Highwater for active changelog partitions:", [["topic", "partition", "highwater"], …])`` from a
    message followed by a terminaltables table; border lines are dropped, each row's cells kept."""
    kept, rows = [], []
    for line in message.splitlines():
        if not _TABLE_LINE.match(line):
            kept.append(line)
            continue
        cells = [cell.strip() for cell in _TABLE_CELL_SPLIT.split(line.strip())]
        if len(cells) > 2 and not cells[0] and not cells[-1]:  # "| a | b |" -> ["", "a", "b", ""]
            rows.append(cells[1:-1])
    return "\n".join(kept).strip(), rows


class _Redactor:
    """Replace every occurrence of a secret, in keys and values at any depth, by ``***``.

    Values that are not JSON types are turned into text first (an exception, a URL object, a config dict's
    repr), so a secret inside them is found too. ``exc_info`` is left for the renderer (JSON: already text by
    then; console: the rendered line is redacted as a whole).
    """

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self.secrets = tuple(sorted(set(secrets), key=len, reverse=True))  # longest first: no partial leftovers

    def __call__(self, _logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        if not self.secrets:
            return event_dict
        return {self.text(str(k)): v if k == "exc_info" else self._value(v) for k, v in event_dict.items()}

    def text(self, value: str) -> str:
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, Mapping):
            return {self.text(str(k)): self._value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self._value(v) for v in value]
        return self.text(str(value))


def _secret_values(settings: Settings, extra: Iterable[str | SecretStr | None]) -> tuple[str, ...]:
    found = [v for v in (getattr(settings, name) for name in type(settings).model_fields) if isinstance(v, SecretStr)]
    values = []
    for secret in [*found, *extra]:
        if isinstance(secret, SecretStr):
            secret = secret.get_secret_value()
        if isinstance(secret, str) and secret:
            values.append(secret)
    return tuple(values)


def _level(name: str) -> int:
    levels = logging.getLevelNamesMapping()
    try:
        return levels[name.strip().upper()]
    except KeyError:
        raise ValueError(f"log level must be one of {sorted(levels)}, got {name!r}") from None


def _isatty(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _log_uncaught(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    """A crash's traceback as one JSON line instead of raw text on stderr."""
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    logging.getLogger("skuvid").critical("uncaught exception, exiting", exc_info=(exc_type, exc, tb))
