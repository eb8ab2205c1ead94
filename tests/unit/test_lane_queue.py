import asyncio

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from consumers.lane_queue import LaneQueue


def rec(topic: str, partition: int, offset: int) -> ConsumerRecord:
    return ConsumerRecord(topic, partition, offset, 0, 0, None, b"", None, 0, 0, [])


async def test_hot_records_first_and_each_partition_in_offset_order():
    queue = LaneQueue(8, hot_topics={"hot"})
    for record in (rec("bulk", 0, 1), rec("bulk", 0, 2), rec("hot", 3, 7), rec("bulk", 1, 5), rec("hot", 3, 8)):
        queue.put_nowait(record)
    order = [(r.topic, r.partition, r.offset) for r in [await queue.get(0.1) for _ in range(5)]]
    assert order == [("hot", 3, 7), ("hot", 3, 8), ("bulk", 0, 1), ("bulk", 0, 2), ("bulk", 1, 5)]
    assert await queue.get(0.05) is None


async def test_bounded_and_waiting_get_wakes_up():
    queue = LaneQueue(1, hot_topics={"hot"})
    waiter = asyncio.create_task(queue.get(2.0))
    await asyncio.sleep(0)
    queue.put_nowait(rec("bulk", 0, 0))
    assert (await waiter).offset == 0
    queue.put_nowait(rec("bulk", 0, 1))
    assert queue.free() == 0
    with pytest.raises(asyncio.QueueFull):
        queue.put_nowait(rec("hot", 0, 0))


async def test_drop_forgets_revoked_partitions_only():
    queue = LaneQueue(4, hot_topics={"hot"})
    for record in (rec("hot", 0, 1), rec("bulk", 2, 1), rec("bulk", 3, 1)):
        queue.put_nowait(record)
    queue.drop({TopicPartition("hot", 0), TopicPartition("bulk", 2)})
    assert queue.qsize() == 1 and (await queue.get(0.1)).partition == 3
