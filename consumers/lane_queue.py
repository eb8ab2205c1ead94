"""The renderer's bounded buffer between fetching and rendering, hot lane first.

Each partition belongs to one lane and each lane is first-in first-out, so the records of one partition
are still rendered in offset order and per-partition commits stay monotonic: priority only ever reorders
records of different partitions.
"""

from __future__ import annotations

import asyncio
from collections import deque

from aiokafka import ConsumerRecord, TopicPartition


class LaneQueue:
    def __init__(self, maxsize: int, hot_topics: set[str]) -> None:
        self.maxsize = maxsize
        self.hot_topics = hot_topics
        self._hot: deque[ConsumerRecord] = deque()
        self._bulk: deque[ConsumerRecord] = deque()
        self._nonempty = asyncio.Event()

    def qsize(self) -> int:
        return len(self._hot) + len(self._bulk)

    def free(self) -> int:
        return self.maxsize - self.qsize()

    def put_nowait(self, record: ConsumerRecord) -> None:
        if not self.free():
            raise asyncio.QueueFull(f"{self.maxsize} records already waiting")
        (self._hot if record.topic in self.hot_topics else self._bulk).append(record)
        self._nonempty.set()

    async def get(self, timeout_s: float) -> ConsumerRecord | None:
        """The oldest hot record, else the oldest bulk one; None when nothing arrives within ``timeout_s``."""
        if not self.qsize() and not await self.wait(timeout_s):
            return None
        return self.take(set())

    def take(self, busy: set[TopicPartition]) -> ConsumerRecord | None:
        """The oldest hot record, else the oldest bulk one, of a partition not in ``busy`` (one already being
        processed): records of one partition leave in offset order, one at a time. None if there is none."""
        for lane in (self._hot, self._bulk):
            for i, record in enumerate(lane):
                if TopicPartition(record.topic, record.partition) not in busy:
                    del lane[i]
                    if not self.qsize():
                        self._nonempty.clear()
                    return record
        return None

    async def wait(self, timeout_s: float) -> bool:
        """Wait until a record is queued (True) or ``timeout_s`` passed (False)."""
        try:
            await asyncio.wait_for(self._nonempty.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def drop(self, partitions: set[TopicPartition]) -> None:
        """Forget records of ``partitions`` (revoked: their new owner will process them)."""
        for lane in (self._hot, self._bulk):
            kept = [r for r in lane if TopicPartition(r.topic, r.partition) not in partitions]
            lane.clear()
            lane.extend(kept)
        if not self.qsize():
            self._nonempty.clear()
