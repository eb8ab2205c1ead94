"""``skuvid review report`` and ``skuvid review export``: from ``video.reviewed`` on the configured broker.

    skuvid review report [--since DATE] [--until DATE] [--json | --html FILE]
    skuvid review export --since DATE [--until DATE] --out DIR

Dates are ISO days (UTC, both ends included). A broker that cannot be read is one JSON line
``{"reason", "message"}`` on stdout and exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, date, datetime, time
from pathlib import Path

import orjson

EXIT_FAILED = 1


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("review", help="review verdicts: approval report, training export")
    commands = parser.add_subparsers(dest="review_command", required=True)

    p = commands.add_parser("report", help="approval rate per template, style, category and model (Wilson CI)")
    p.add_argument("--since", type=date.fromisoformat, help="first day (UTC) included, YYYY-MM-DD")
    p.add_argument("--until", type=date.fromisoformat, help="last day (UTC) included")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="the report as one line of JSON")
    output.add_argument("--html", type=Path, metavar="FILE", help="write the report with charts as HTML")
    p.set_defaults(func=_cmd_report)

    p = commands.add_parser("export", help="approved and rejected examples as JSONL plus a dataset card")
    p.add_argument("--since", type=date.fromisoformat, required=True, help="first day (UTC) included")
    p.add_argument("--until", type=date.fromisoformat, help="last day (UTC) included")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=_cmd_export)


def _start(day: date | None) -> datetime | None:
    return datetime.combine(day, time.min, UTC) if day else None


def _end(day: date | None) -> datetime | None:
    return datetime.combine(day, time.max, UTC) if day else None


def _read(args: argparse.Namespace):
    from review.source import read_reviewed
    from skuvid.settings import get_settings

    return asyncio.run(read_reviewed(get_settings(), _start(args.since)))


def _failed(exc: BaseException) -> int:
    from skuvid.errors import classify

    failure = classify(exc)
    sys.stdout.write(orjson.dumps({"reason": failure.reason.value, "message": failure.message}).decode() + "\n")
    return EXIT_FAILED


def _cmd_report(args: argparse.Namespace) -> int:
    from review.report import build_report, render_html, render_text, report_json, rows_from

    try:
        events = _read(args)
    except Exception as exc:  # noqa: BLE001 - one JSON line, no traceback
        return _failed(exc)
    report = build_report(rows_from(events, since=_start(args.since), until=_end(args.until)),
                          since=args.since, until=args.until)
    if args.json:
        sys.stdout.write(orjson.dumps(report_json(report)).decode() + "\n")
    elif args.html:
        args.html.parent.mkdir(parents=True, exist_ok=True)
        args.html.write_text(render_html(report))
        sys.stdout.write(orjson.dumps({"html": str(args.html), "verdicts": report.overall.n}).decode() + "\n")
    else:
        sys.stdout.write(render_text(report))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from review.export import export_examples

    try:
        events = _read(args)
    except Exception as exc:  # noqa: BLE001
        return _failed(exc)
    summary = export_examples(events, args.out, since=_start(args.since), until=_end(args.until))
    sys.stdout.write(orjson.dumps(summary.as_json()).decode() + "\n")
    return 0
