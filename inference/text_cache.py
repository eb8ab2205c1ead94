"""Text embeddings, computed once per distinct text and kept in a bounded LRU.

UMT5-XXL is 5.7 B parameters: encoding costs a GPU forward (or, with the encoder left on the CPU to free
11 GB of GPU memory, seconds of CPU) every time. The texts repeat a lot — the negative prompt is one per
language, a positive prompt is reused by every quality retry and by variants that share it — so caching them
by the hash of the text makes the encoder's cost disappear from the steady state and makes the CPU
placement affordable.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class TextEmbeddingCache(Generic[T]):
    """``get(text)`` returns ``encode(text)``, computed once per distinct text while at most ``max_entries``
    are kept (least recently used evicted). Thread-safe; ``hits`` and ``misses`` count lookups."""

    def __init__(self, encode: Callable[[str], T], max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self._encode = encode
        self.max_entries = max_entries
        self._entries: OrderedDict[str, T] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, text: str) -> T:
        key = hashlib.sha256(text.encode()).hexdigest()
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key]
            self.misses += 1
        value = self._encode(text)  # outside the lock: a slow encode must not block lookups of other texts
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._entries)
