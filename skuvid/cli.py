"""The ``skuvid`` command: render, emit, serve, bench, demo, schemas, review.

No path shows a traceback. ``render`` exits 0 when it rendered, 2 when the input is refused (invalid JSON,
schema, unsafe or empty content, a forbidden, unreachable or broken image, an unreadable file) and 1 for
faults of the environment (model not available, out of memory, a bug), printing ``{"reason", "message"}``
as one JSON line on stdout in both cases.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

import orjson

from skuvid.settings import get_settings

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def _print_json(obj) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


def _cmd_render(args: argparse.Namespace) -> int:
    from skuvid.errors import classify
    from skuvid.render_one import INPUT_REASONS, render_product_file

    try:
        with _terminal_progress() as progress:
            ready = render_product_file(Path(args.product), Path(args.out), get_settings(), progress=progress)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one JSON line and an exit code
        failure = classify(exc)
        _print_json({"reason": failure.reason.value, "message": failure.message, **failure.details})
        return EXIT_BAD_INPUT if failure.reason in INPUT_REASONS else EXIT_FAILED
    _print_json(ready.model_dump(mode="json"))
    return 0


@contextlib.contextmanager
def _terminal_progress():
    """A progress callback drawing stage and denoising step on stderr when it is a terminal; else None."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("reading product", total=None)

        def report(stage: str, step: int | None, total: int | None) -> None:
            bar.update(task, description=stage, completed=step or 0, total=total)

        yield report


def _cmd_emit(args: argparse.Namespace) -> int:
    from producers.emit import EmitReport, dumps_report, emit_events, parse_numbered, resolve_topic
    from producers.publisher import Publisher
    from skuvid.errors import classify

    settings = get_settings()
    try:
        topic = resolve_topic(args.topic, allow_internal=args.allow_internal)
        events, errors = parse_numbered(topic, Path(args.file), settings.max_payload_bytes)
    except (ValueError, OSError) as exc:
        _print_json({"reason": "invalid_input", "message": str(exc)})
        return EXIT_BAD_INPUT

    async def send() -> EmitReport:
        publisher = await Publisher.start(settings, source="urn:skuvid:emit")
        try:
            return await emit_events(publisher, topic, events, errors)
        finally:
            await publisher.stop()

    try:
        report = asyncio.run(send()) if events else EmitReport(topic.name, errors=errors)
    except Exception as exc:  # noqa: BLE001 - broker down, credentials refused …: one JSON line, no traceback
        failure = classify(exc)
        _print_json({"reason": failure.reason.value, "message": f"{settings.kafka_bootstrap}: {failure.message}"})
        return EXIT_FAILED
    for error in report.errors:
        print(f"{args.file}:{error.line}: {error.reason}: {error.message}", file=sys.stderr)
    for line, event_id in report.sent_ids:
        print(f"{args.file}:{line}: sent {event_id}", file=sys.stderr)
    print(dumps_report(report))
    return EXIT_BAD_INPUT if report.errors else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from skuvid.composition import serve

    return serve(get_settings(), args.role)


def _cmd_bench(args: argparse.Namespace) -> int:
    from bench import run_named

    result = run_named(args.name, get_settings(), full_size=args.full_size)
    _print_json(result) if args.json else print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from skuvid.demo import run_demo

    return run_demo(Path(args.out), idle_timeout_s=args.idle_timeout)


def _cmd_schemas(args: argparse.Namespace) -> int:
    from schemas.export import write

    for path in write():
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skuvid", description="Catalog events in, labelled AI product videos out.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("render", help="render one product JSON to DIR/<sku>.mp4 without Kafka")
    p.add_argument("product", help="product JSON (a product.created event or its product fields)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_render)

    p = sub.add_parser("emit", help="validate a JSONL file against a topic's schema and publish it")
    p.add_argument("topic")
    p.add_argument("file")
    p.add_argument("--allow-internal", action="store_true",
                   help="also allow skuvid's own output and internal topics (video.ready, video.requested …)")
    p.set_defaults(func=_cmd_emit)

    p = sub.add_parser("serve", help="run the services against the configured broker")
    p.add_argument("--role", choices=("all", "planner", "renderer", "api"), default="all")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("bench", help="run a benchmark and print JSON")
    p.add_argument("name", choices=("inference", "prompts", "postprocess", "planner", "planner_logic", "fanout", "cli",
                                    "api", "renderer", "gpu", "experiments"))
    p.add_argument("--json", action="store_true", help="one line of JSON")
    p.add_argument("--full-size", action="store_true", help="inference: full 5B architecture (GPU)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("demo", help="the whole system on an embedded broker with the tiny model")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--idle-timeout", type=float, default=180.0,
                   help="give up after this many seconds without a new outcome (default 180)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("schemas", help="regenerate the JSON Schema and AsyncAPI files")
    p.set_defaults(func=_cmd_schemas)

    from experiments.cli import register as register_experiments

    register_experiments(sub)

    from review.cli import add_commands as add_review_commands  # `skuvid review report|export`

    add_review_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
