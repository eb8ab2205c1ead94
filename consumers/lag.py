"""Consumer lag of this process's group member, for ``Metrics.set_lag`` (``skuvid_consumer_lag_records``).

Each process reports only the partitions assigned to it, so summing over pods counts every partition once.
Lag is ``end offset - committed offset``: records of the partition not yet done (for the renderer, queued and
running jobs included). End offsets are asked of the broker (ListOffsets), not taken from the last fetch,
so a renderer that paused its partitions still sees its backlog grow.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from skuvid.metrics import Metrics

log = logging.getLogger(__name__)

Lags = dict[tuple[str, int], int]


def lag_records(end_offsets: Mapping[Any, int | None], done: Mapping[Any, int | None]) -> Lags:
    """``(topic, partition) -> end - done`` (never below 0) for each partition with a known end offset;
    ``done`` is the committed offset (or the position when nothing was committed yet). Keys are
    TopicPartition-like: ``.topic`` and ``.partition``."""
    lags: Lags = {}
    for tp, end in end_offsets.items():
        if end is None:
            continue
        consumed = done.get(tp)
        lags[(tp.topic, tp.partition)] = max(end - (consumed if consumed is not None else 0), 0)
    return lags


async def aiokafka_lag(consumer: Any) -> Lags:
    """Lag of an ``AIOKafkaConsumer``'s assigned partitions (the renderer, the planner)."""
    assigned = list(consumer.assignment())
    if not assigned:
        return {}
    end = await consumer.end_offsets(assigned)
    committed = await asyncio.gather(*(consumer.committed(tp) for tp in assigned))
    done = {}
    for tp, offset in zip(assigned, committed, strict=True):
        done[tp] = offset if offset is not None else await consumer.position(tp)
    return lag_records(end, done)


async def report_lag(metrics: Metrics, group: str, measure: Callable[[], Awaitable[Lags]], *,
                     interval_s: float = 15.0) -> None:
    """Every ``interval_s``, ``metrics.set_lag(group, await measure())`` until cancelled. A failed measure
    is logged and the last values stay (the broker may be briefly unreachable); it never ends the task."""
    while True:
        try:
            metrics.set_lag(group, await measure())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - lag is observability: a broker hiccup must not stop the service
            log.warning("measuring consumer lag of %s failed: %r", group, exc)
        await asyncio.sleep(interval_s)
