"""Kafka's default partitioner (murmur2 of the key), as the Java client and aiokafka compute it, faster.

aiokafka's ``murmur2`` is pure Python over single bytes (about 4 µs for a 25-byte key); the planner computes
it for two records of every request it plans. This one reads the key's 32-bit words in one ``struct`` call
and gives the same hash (tested against aiokafka's on random keys).
"""

from __future__ import annotations

import struct

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_SEED = 0x9747B28C


def murmur2(data: bytes) -> int:
    """MurmurHash2 of ``data`` as ``org.apache.kafka.common.utils.Utils.murmur2`` (unsigned 32 bits)."""
    length = len(data)
    h = _SEED ^ length
    words = length >> 2
    if words:
        for k in struct.unpack_from(f"<{words}I", data):
            k = (k * _M) & _MASK
            k = ((k ^ (k >> 24)) * _M) & _MASK
            h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail:
        end = length & ~3
        if tail == 3:
            h ^= data[end + 2] << 16
        if tail >= 2:
            h ^= data[end + 1] << 8
        h = ((h ^ data[end]) * _M) & _MASK
    h = ((h ^ (h >> 13)) * _M) & _MASK
    return h ^ (h >> 15)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a record with ``key`` among ``partitions``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
