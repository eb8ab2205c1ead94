"""Everything skuvid writes to Kafka goes through ``Publisher``: typed events, CloudEvents headers, SKU keys.

``publish`` returns only once the broker has acknowledged the record (acks=all, idempotent producer), so a
consumer may commit its input offset right after it: the outcome is durable first.
"""

from __future__ import annotations

from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata
from pydantic import BaseModel

from schemas.codec import Headers, ce_headers, encode_value, record_key
from schemas.topics import Topic
from skuvid.kafka_clients import aiokafka_options, compression_type
from skuvid.settings import Settings


def producer_config(settings: Settings) -> dict:
    """Production client settings: every record acknowledged by all in-sync replicas, no duplicates on retry."""
    return {
        **aiokafka_options(settings),  # bootstrap servers and security, as every skuvid client connects
        "client_id": f"{settings.kafka_client_id}-producer",
        "acks": "all",
        "enable_idempotence": settings.kafka_idempotent,
        "compression_type": compression_type(settings),
        "linger_ms": 5,
        "max_request_size": 4 * 1_048_576,
        "request_timeout_ms": 30_000,
    }


class Publisher:
    def __init__(self, producer: AIOKafkaProducer, source: str = "urn:skuvid") -> None:
        self.producer = producer
        self.source = source

    @classmethod
    async def start(cls, settings: Settings, source: str = "urn:skuvid") -> Publisher:
        producer = AIOKafkaProducer(**producer_config(settings))
        try:
            await producer.start()
        except BaseException:
            await producer.stop()  # release its connections and tasks before reporting the failure
            raise
        return cls(producer, source)

    async def stop(self) -> None:
        await self.producer.stop()

    async def publish(self, topic: Topic, event: BaseModel) -> RecordMetadata:
        """Send one event and wait for the broker's acknowledgement."""
        return await self.publish_raw(topic.name, record_key(event), encode_value(event), ce_headers(topic, event, self.source))

    async def publish_raw(self, topic: str, key: bytes | None, value: bytes, headers: Headers | None = None) -> RecordMetadata:
        return await self.producer.send_and_wait(topic, value=value, key=key, headers=headers or [])
