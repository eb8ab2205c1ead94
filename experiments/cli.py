"""``skuvid experiment …``: report, agent, simulate. Hooked into ``skuvid/cli.py`` with ``register(sub)``.

``skuvid experiment report EXP_ID`` reads the experiment's declaration (``--experiments``, default
``deploy/experiments/experiments.json``) and the totals the agent aggregated: by default from the agent's
changelog topic on ``SKUVID_KAFKA_BOOTSTRAP`` (``--group``, default ``skuvid-experiments``), which is the
durable state of every partition; or from a totals file (``--totals``, as written by ``experiment simulate``
or by ``report --out``). It prints the table (with ``--json``: the report as JSON); ``--out DIR`` writes
``DIR/EXP_ID.html``, ``DIR/EXP_ID.json`` and ``DIR/EXP_ID.totals.json``; ``--metrics-file FILE`` writes the
figures as Prometheus gauges (text exposition format).

Bad input never shows a traceback: ``{"reason": CODE, "message": …}`` on stdout and exit 2; an unreachable
broker or a missing changelog exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import orjson
from pydantic import ValidationError

from experiments.changelog import DEFAULT_GROUP
from schemas.engagement import Experiment, ExperimentCatalog

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
DEFAULT_EXPERIMENTS = Path("deploy/experiments/experiments.json")


class CliError(Exception):
    """A failure the user can act on: ``reason`` is the machine-readable code, ``code`` the exit status."""

    def __init__(self, reason: str, message: str, code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.reason, self.message, self.code = reason, message, code


def _print_json(obj) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``experiment report|agent|simulate`` to the ``skuvid`` parser's subcommands."""
    parser = subparsers.add_parser("experiment", help="A/B experiments: do the videos sell?")
    sub = parser.add_subparsers(dest="experiment_command", required=True)

    p = sub.add_parser("report", help="analyse one experiment: uplifts, CIs, p-values, SRM, HTML charts")
    p.add_argument("experiment_id")
    p.add_argument("--experiments", type=Path, default=DEFAULT_EXPERIMENTS, help="declarations (%(default)s)")
    p.add_argument("--totals", type=Path, help="a totals JSON file instead of the agent's changelog topic")
    p.add_argument("--group", default=DEFAULT_GROUP, help="the agent's group, for its changelog (%(default)s)")
    p.add_argument("--out", type=Path, help="write DIR/EXP_ID.html, .json and .totals.json")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    p.add_argument("--metrics-file", type=Path, help="write the figures as Prometheus gauges (text format)")
    p.set_defaults(func=_guarded(cmd_report))

    p = sub.add_parser("agent", help="run the experiment aggregator (faust) against SKUVID_KAFKA_BOOTSTRAP")
    p.add_argument("--group", default=DEFAULT_GROUP)
    p.add_argument("--data-dir", type=Path, default=Path(".cache/experiments"))
    p.add_argument("--metrics-port", type=int, default=0)
    p.add_argument("--commit-every", type=int, default=100, help="commit offsets every N events")
    p.add_argument("--commit-interval", type=float, default=1.0, help="... or every S seconds")
    p.set_defaults(func=cmd_agent)

    p = sub.add_parser("simulate", help="a seeded engagement stream with known truth: JSONL events and/or totals")
    p.add_argument("experiment_id")
    p.add_argument("--experiments", type=Path, default=DEFAULT_EXPERIMENTS)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--days", type=int, default=14)
    p.add_argument("--control-rate", type=float, default=0.153, help="control add-to-cart rate (%(default)s)")
    p.add_argument("--rate", action="append", default=[], metavar="ARM=RATE", help="a treatment's add-to-cart rate")
    p.add_argument("--duplicates", type=float, default=0.0, help="share of events sent twice")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--events", type=Path, help="write the events as JSONL (for `skuvid emit engagement`)")
    p.add_argument("--totals", type=Path, help="write their aggregated totals (for `report --totals`)")
    p.set_defaults(func=_guarded(cmd_simulate))


def _guarded(command):
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except CliError as exc:
            _print_json({"reason": exc.reason, "message": exc.message})
            return exc.code

    return run


def load_experiment(path: Path, experiment_id: str) -> Experiment:
    """The declaration of ``experiment_id`` in the catalog file ``path``; ``CliError`` says what is wrong."""
    try:
        catalog = ExperimentCatalog.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise CliError("file_unreadable", f"{path}: {exc.strerror or exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CliError("schema_violation", f"{path}: {'.'.join(map(str, first['loc'])) or '<root>'}: "
                       f"{first['msg']}") from None
    try:
        return catalog.get(experiment_id)
    except KeyError as exc:
        raise CliError("unknown_experiment", str(exc.args[0])) from None


def load_totals(args: argparse.Namespace):
    """(totals, where they came from): the ``--totals`` file, or the agent's changelog topic."""
    from experiments.aggregate import Totals

    if args.totals is not None:
        try:
            return Totals.read(args.totals), f"totals file {args.totals}"
        except OSError as exc:
            raise CliError("file_unreadable", f"{args.totals}: {exc.strerror or exc}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise CliError("schema_violation", f"{args.totals}: {exc}") from None
    from aiokafka.errors import KafkaError

    from experiments.changelog import changelog_topic, read_totals
    from skuvid.kafka_clients import aiokafka_options
    from skuvid.settings import get_settings

    settings = get_settings()
    topic = changelog_topic(args.group)
    try:
        totals = asyncio.run(read_totals(aiokafka_options(settings), topic))
    except LookupError as exc:
        raise CliError("unknown_topic", str(exc), EXIT_FAILED) from None
    except (KafkaError, TimeoutError, OSError) as exc:
        raise CliError("broker_unavailable", f"{settings.kafka_bootstrap}: {exc}", EXIT_FAILED) from None
    return totals, f"changelog {topic} on {settings.kafka_bootstrap}"


def cmd_report(args: argparse.Namespace) -> int:
    from experiments.html import render_html
    from experiments.metrics import ExperimentMetrics
    from experiments.report import analyse, as_dict, as_json, render_text

    experiment = load_experiment(args.experiments, args.experiment_id)
    totals, source = load_totals(args)
    report = analyse(experiment, totals, source)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        eid = experiment.experiment_id
        (args.out / f"{eid}.html").write_text(render_html(report), encoding="utf-8")
        (args.out / f"{eid}.json").write_bytes(as_json(report))
        (args.out / f"{eid}.totals.json").write_bytes(totals.to_json())
    if args.metrics_file is not None:
        metrics = ExperimentMetrics()
        metrics.publish(report)
        metrics.write_textfile(args.metrics_file)
    if args.json:
        _print_json(as_dict(report))
    else:
        sys.stdout.write(render_text(report))
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    from consumers.experiment_agent import run_agent
    from skuvid.settings import get_settings

    run_agent(get_settings(), group=args.group, data_dir=args.data_dir, metrics_port=args.metrics_port,
              commit_every=args.commit_every, commit_interval_s=args.commit_interval)
    return 0


def _rates(pairs: list[str]) -> dict[str, float]:
    rates = {}
    for pair in pairs:
        arm, sep, value = pair.partition("=")
        try:
            rates[arm] = float(value) if sep else float("nan")
        except ValueError:
            rates[arm] = float("nan")
        if not 0 <= rates[arm] <= 1:
            raise CliError("invalid_input", f"--rate {pair!r}: expected ARM=RATE with RATE in [0, 1]")
    return rates


def cmd_simulate(args: argparse.Namespace) -> int:
    from experiments.aggregate import Aggregator
    from experiments.simulate import SimulationSpec, simulate_events

    experiment = load_experiment(args.experiments, args.experiment_id)
    rates = _rates(args.rate)
    unknown = sorted(set(rates) - {a.arm_id for a in experiment.arms})
    if unknown:
        raise CliError("invalid_input", f"--rate names arms {unknown} that {experiment.experiment_id} does not have")
    if args.users < 1 or args.days < 1:
        raise CliError("invalid_input", "--users and --days must be at least 1")
    spec = SimulationSpec(experiment, users=args.users, days=args.days, control_add_to_cart=args.control_rate,
                          add_to_cart=rates, duplicate_rate=args.duplicates, seed=args.seed)
    try:
        events = simulate_events(spec)
    except ValueError as exc:
        raise CliError("invalid_input", str(exc)) from None
    if args.events is not None:
        with args.events.open("wb") as out:
            for event in events:
                out.write(event.model_dump_json(exclude_none=True).encode() + b"\n")
    aggregator = Aggregator().add_all(events)
    if args.totals is not None:
        args.totals.write_bytes(aggregator.totals().to_json())
    _print_json({"experiment_id": experiment.experiment_id, "events": len(events), "counted": aggregator.counted,
                 "duplicates": aggregator.duplicates,
                 "true_uplift": {a.arm_id: spec.true_uplift(a.arm_id) for a in experiment.treatments}})
    return 0
