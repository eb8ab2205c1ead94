"""How far the renderers are on the on-demand lane: their group's committed offsets, cached briefly.

The renderer commits a record only after its outcome is published, so the committed offset of a partition
is the record a renderer is working on (or holds next): an on-demand render at that offset is ``rendering``,
one beyond it ``queued``.
"""

from __future__ import annotations

import time

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from schemas.topics import VIDEO_REQUESTED_ONDEMAND
from skuvid.kafka_clients import aiokafka_options
from skuvid.settings import Settings


class RendererProgress:
    def __init__(self, settings: Settings, ttl_s: float = 1.0) -> None:
        self.settings = settings
        self.ttl_s = ttl_s
        self._admin: AIOKafkaAdminClient | None = None
        self._cached: tuple[float, dict[int, int]] | None = None

    async def start(self) -> None:
        admin = AIOKafkaAdminClient(**aiokafka_options(self.settings),
                                    client_id=f"{self.settings.kafka_client_id}-api-progress")
        await admin.start()
        self._admin = admin

    async def stop(self) -> None:
        if self._admin is not None:
            await self._admin.close()

    async def committed(self) -> dict[int, int]:
        """Partition -> committed offset of the renderer group on the on-demand lane (absent: none yet)."""
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < self.ttl_s:
            return self._cached[1]
        assert self._admin is not None, "start() first"
        partitions = [TopicPartition(VIDEO_REQUESTED_ONDEMAND.name, p)
                      for p in range(VIDEO_REQUESTED_ONDEMAND.partitions)]
        offsets = await self._admin.list_consumer_group_offsets(self.settings.renderer_group, partitions=partitions)
        result = {tp.partition: meta.offset for tp, meta in offsets.items() if meta is not None and meta.offset >= 0}
        self._cached = (now, result)
        return result
