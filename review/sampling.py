"""Which published videos go to human review, decided the same way on every replica.

A video is queued for any of these causes (``ReviewCause``):

* ``flagged`` — it was published below the quality gate;
* ``rerender`` — it is the re-render of a rejected video (its request's ``source_event_id`` is the verdict);
* ``new_template`` — it is among the first ``new_template_first`` renders (by render time) of its template
  version;
* ``sampled`` — a stratified sample: in every stratum (category x template) the first ``min_per_stratum``
  renders, plus each video whose hash falls under ``rate``. The hash is SHA-256 of
  ``"skuvid-review:<stratum>:<request key>"``, top 53 bits over 2**53 (as ``experiments.assignment`` buckets),
  so each stratum is sampled at ``rate`` independently and any replica reproduces the choice.

"First by render time" is kept as a bounded list per template version and per stratum: a render read late
with an earlier time displaces the last one, so every replica ends with the same set whatever order it read
the topics in.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass, field

from skuvid.settings import Settings

SALT = "skuvid-review"
TOP_BITS = 53


@dataclass(frozen=True)
class SamplingPolicy:
    rate: float = 0.02
    min_per_stratum: int = 1
    new_template_first: int = 20

    @classmethod
    def from_settings(cls, settings: Settings) -> SamplingPolicy:
        return cls(settings.review_sample_rate, settings.review_min_per_stratum, settings.review_new_template_first)

    def sampled(self, request_key: str, stratum: str) -> bool:
        """The hash draw alone (not the per-stratum minimum)."""
        return draw(request_key, stratum) < self.rate


def stratum_of(category: str | None, template_id: str) -> str:
    return f"{(category or 'unknown').strip().lower()}|{template_id}"


def draw(request_key: str, stratum: str) -> float:
    """A uniform number in [0, 1) fixed by the video and its stratum."""
    digest = hashlib.sha256(f"{SALT}:{stratum}:{request_key}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> (64 - TOP_BITS)) / 2**TOP_BITS


@dataclass
class Earliest:
    """The ``size`` earliest ``(time, key)`` seen; ``add`` says whether a key got in and which one it pushed out."""

    size: int
    entries: list[tuple[float, str]] = field(default_factory=list)

    def add(self, at: float, key: str) -> tuple[bool, str | None]:
        if self.size <= 0:
            return False, None
        entry = (at, key)
        if entry in self.entries:
            return True, None
        if len(self.entries) >= self.size and entry > self.entries[-1]:
            return False, None
        bisect.insort(self.entries, entry)
        if len(self.entries) > self.size:
            return True, self.entries.pop()[1]
        return True, None

    def __contains__(self, key: str) -> bool:
        return any(k == key for _, k in self.entries)
