"""A bounded LRU of products' prompt analyses: a promo over a category builds only each product's variant part.

``PromptCache.build(engine, product, variant)`` gives what ``engine.build`` gives (the same ``Prompt``, or the
same ``ContentRefused``) and keeps ``engine.analyse(product, language)`` — the screened and cleaned texts, the
subject, the selling-point and attribute phrases, about three quarters of a build — for the product's next
variant: the planner analyses a product when it plans its daily variants, and a promo fan-out over its
category later only screens the promo copy (once per promo), assembles, and hashes.

An entry is keyed by a 128-bit BLAKE2b digest of the engine's ``fingerprint`` (library, safety lists, policy:
another library never reuses an analysis), the language and every text the analysis reads (title, brand,
category, selling points, attributes, in order). Entries are weighed by the bytes of the strings they hold plus
fixed overheads, a little more than tracemalloc measures (a row of the bench catalog: 1.9 KB weighed, 1.65 KB
measured; a product at the schema's limits: ~37 KB); the least recently used go once the total passes
``max_bytes`` (default 256 MiB: ~140,000 such rows). Not thread-safe: one per event loop.

Kept in process rather than with the catalog table's snapshots: nothing to serialise, write to the changelog or
migrate, and a restart or another library starts from an empty cache. The cost: a promo over more products than
fit, or the first one after a restart, builds the products it misses in full, as before.
"""

from __future__ import annotations

import hashlib
import sys
from collections import OrderedDict

import orjson

from inference.prompt.engine import ProductAnalysis, PromptEngine
from inference.prompt.variants import VariantSpec
from schemas.events import Locale, ProductSnapshot, Prompt

DEFAULT_MAX_BYTES = 256 << 20
ENTRY_BYTES = 600  # key, LRU node, analysis and its tuples (tracemalloc: 200–500 B), rounded up
PHRASE_BYTES = 100  # one Phrase tuple


class PromptCache:
    """``engine.build`` with each product's analysis kept, ``max_bytes`` of them at most (LRU)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[bytes, tuple[ProductAnalysis | None, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def build(self, engine: PromptEngine, product: ProductSnapshot, variant: VariantSpec,
              clip_duration_s: float = 5.0) -> Prompt:
        """``engine.build(product, variant, clip_duration_s)``, from the product's kept analysis when there is one."""
        analysis = self._analysis(engine, product, variant.region or product.locale)
        if analysis is None:  # refused or empty on its own: build says why
            return engine.build(product, variant, clip_duration_s)
        return engine.build_from(analysis, product, variant, clip_duration_s)

    def _analysis(self, engine: PromptEngine, product: ProductSnapshot, language: Locale) -> ProductAnalysis | None:
        key = _key(engine, product, language)
        entries = self._entries
        entry = entries.get(key)
        if entry is not None:
            entries.move_to_end(key)
            return entry[0]
        analysis = engine.analyse(product, language)
        weight = _weight(analysis)
        entries[key] = (analysis, weight)
        self.bytes += weight
        while self.bytes > self.max_bytes:
            self.bytes -= entries.popitem(last=False)[1][1]
        return analysis


def _key(engine: PromptEngine, product: ProductSnapshot, language: Locale) -> bytes:
    """A digest of the engine's fingerprint, the language and every text an analysis reads, in order."""
    texts = [engine.fingerprint, language, product.title, product.brand, product.category, product.selling_points,
             product.attributes]
    return hashlib.blake2b(orjson.dumps(texts), digest_size=16).digest()


def _weight(analysis: ProductAnalysis | None) -> int:
    """Bytes an entry holds, about (library strings shared by many entries are counted in each)."""
    if analysis is None:
        return ENTRY_BYTES
    texts = [analysis.subject.text, *(p.text for p in analysis.content), *analysis.screened]
    return ENTRY_BYTES + PHRASE_BYTES * (1 + len(analysis.content)) + sum(map(sys.getsizeof, texts))
