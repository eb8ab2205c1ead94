"""The experiment agent (faust-streaming, group ``skuvid-experiments``): ``engagement`` in, experiment totals out.

Two thin agents over ``experiments.aggregate``:

1. ``rekey`` validates each ``engagement`` record (undecodable ones go to ``skuvid.dead-letter`` with their
   bytes) and forwards it, unchanged, to the internal topic ``<group>-engagement-by-user`` keyed by user id.
   Producers may key ``engagement`` by anything (``skuvid emit`` keys by SKU); per-user statistics need every
   event of a user in one partition. (A user's events keep their order only when the input is keyed by user;
   the totals do not depend on the order, only the day a change is booked in can.)
2. ``aggregate`` books each record into the changelog-backed table ``experiment_state`` with
   ``aggregate.apply(table, event, partition, offset)``: per-user records plus per
   experiment × arm × category × day × partition cells.

At-least-once all the way, exactly-once totals: a re-forwarded or re-sent event has the same event id and
lands in the same partition, where the user record knows it; an event replayed after a crash (its offset not
yet committed, part of its table writes already in the changelog) is booked only into the cells that lack
it (see ``experiments/aggregate.py``). faust flushes the producer (the changelog) before it commits offsets.

State is in memory (``memory://``, rebuilt from the changelog at start, like the planner): about 2 KB per user
in an experiment (the user record keeps up to ``RECENT_EVENTS`` event ids for deduplication).

``skuvid experiment report`` reads the totals from the table's changelog (``experiments/changelog.py``).
Run: ``python -m consumers.experiment_agent [--group G] [--data-dir D] [--metrics-port N] [--commit-every N]
[--commit-interval S]`` (or ``skuvid experiment agent``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import faust

from consumers.outcomes import dead_letter
from experiments.aggregate import apply
from experiments.changelog import DEFAULT_GROUP, TABLE, changelog_topic
from experiments.metrics import ExperimentMetrics
from schemas.codec import DecodeError, ce_headers, decode, encode_value, record_key
from schemas.engagement import EngagementEvent, engagement_key
from schemas.events import Reason
from schemas.topics import DEAD_LETTER, ENGAGEMENT
from skuvid.brokers import BrokerError, ensure_topics
from skuvid.errors import FatalError
from skuvid.kafka_clients import bootstrap_list, compression_type, faust_app_options, security_options
from skuvid.settings import Settings, get_settings

log = logging.getLogger(__name__)

GROUP = DEFAULT_GROUP
PARTITIONS = ENGAGEMENT.partitions


def by_user_topic(group: str) -> str:
    """The internal re-keyed topic of this agent group."""
    return f"{group}-engagement-by-user"


def ensure_agent_topics(settings: Settings, group: str = GROUP) -> None:
    """Create (or verify) every topic the agent uses before faust starts: faust declares its internal topics
    itself, but subscribes right after, and a topic the cluster metadata does not show yet is left out of the
    first assignment until the next metadata refresh (minutes): the agent would sit idle. Raises
    ``FatalError`` when a topic exists with another partition count or cannot be created."""
    wanted = {ENGAGEMENT.name: PARTITIONS, DEAD_LETTER.name: DEAD_LETTER.partitions,
              by_user_topic(group): PARTITIONS, changelog_topic(group): PARTITIONS}
    try:
        ensure_topics(",".join(bootstrap_list(settings)), wanted, replication=settings.kafka_replication_factor,
                      configs={changelog_topic(group): {"cleanup.policy": "compact"}},
                      client_options=security_options(settings))
    except BrokerError as exc:
        raise FatalError(f"the experiment agent's topics are not usable: {exc}",
                         reason=Reason.BROKER_UNAVAILABLE) from None


def create_app(settings: Settings, metrics: ExperimentMetrics, *, group: str = GROUP,
               data_dir: Path = Path(".cache/experiments"), commit_every: int = 100,
               commit_interval_s: float = 1.0) -> faust.App:
    """The faust app. ``commit_every`` / ``commit_interval_s``: offsets are committed after that many events or
    seconds; a crash replays at most that much (correctly, but it is work done twice)."""
    app = faust.App(
        group,
        **faust_app_options(settings),
        store="memory://",
        datadir=str(data_dir),
        topic_partitions=PARTITIONS,
        producer_max_batch_size=1 if settings.kafka_one_record_batches else 16384,
        producer_compression_type=compression_type(settings),
        broker_commit_every=commit_every,
        broker_commit_interval=commit_interval_s,
    )
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    engagement = app.topic(ENGAGEMENT.name, **raw)
    by_user = app.topic(by_user_topic(group), partitions=PARTITIONS, internal=True, **raw)
    dead_letters = app.topic(DEAD_LETTER.name, **raw)
    json_schema = faust.Schema(key_serializer="json", value_serializer="json")
    state = app.Table(TABLE, default=None, partitions=PARTITIONS, schema=json_schema)

    async def park(message, exc: DecodeError) -> None:
        metrics.events.labels("dead_letter").inc()
        log.warning("dead-lettering %s[%d]@%d: %s", message.topic, message.partition, message.offset, exc.message)
        record = dead_letter(topic=message.topic, partition=message.partition, offset=message.offset,
                             key=message.key, value=message.value, reason=exc.reason, message=exc.message)
        await dead_letters.send(key=record_key(record), value=encode_value(record),
                                headers=ce_headers(DEAD_LETTER, record))

    @app.agent(engagement)
    async def rekey(stream):
        async for event in stream.events():
            message = event.message
            try:
                parsed = decode(ENGAGEMENT, message.value, max_bytes=settings.max_payload_bytes)
            except DecodeError as exc:
                await park(message, exc)
                continue
            assert isinstance(parsed, EngagementEvent)
            await by_user.send(key=engagement_key(parsed), value=message.value)

    @app.agent(by_user)
    async def aggregate(stream):
        async for event in stream.events():
            message = event.message
            parsed = decode(ENGAGEMENT, message.value, max_bytes=settings.max_payload_bytes)  # validated upstream
            assert isinstance(parsed, EngagementEvent)
            outcome = apply(state, parsed, message.partition, message.offset)
            metrics.events.labels(outcome.value).inc()

    return app


def run_agent(settings: Settings, *, group: str = GROUP, data_dir: Path = Path(".cache/experiments"),
              metrics_port: int = 0, commit_every: int = 100, commit_interval_s: float = 1.0) -> None:
    """Run the experiment agent until SIGINT/SIGTERM (faust drains and commits on the way out)."""
    from prometheus_client import start_http_server

    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    metrics = ExperimentMetrics()
    if metrics_port:
        start_http_server(metrics_port, registry=metrics.registry)
    ensure_agent_topics(settings, group)
    app = create_app(settings, metrics, group=group, data_dir=data_dir, commit_every=commit_every,
                     commit_interval_s=commit_interval_s)
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), override_logging=False)
    worker.execute_from_commandline()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", default=GROUP, help="faust app id / consumer group (default %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=Path(".cache/experiments"))
    parser.add_argument("--metrics-port", type=int, default=0, help="serve /metrics on this port (0: off)")
    parser.add_argument("--commit-every", type=int, default=100, help="commit offsets every N events")
    parser.add_argument("--commit-interval", type=float, default=1.0, help="... or every S seconds")
    args = parser.parse_args(argv)
    run_agent(get_settings(), group=args.group, data_dir=args.data_dir, metrics_port=args.metrics_port,
              commit_every=args.commit_every, commit_interval_s=args.commit_interval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
