"""``skuvid review export``: reviewed videos as training examples — ``approved.jsonl`` and ``rejected.jsonl``
(one example per line: prompt, product fields, video URL, scores, verdict, reason) and a dataset card
(``README.md``) saying what is in it, how it was sampled and what it must not be used for.

The first verdict per request key counts (as in the report). Lines are ordered by review time; every value
is the one the reviewer saw (``video.reviewed`` is self-contained).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from review.report import build_report, rows_from
from schemas.events import Verdict, VideoReviewed

FILES = {Verdict.APPROVED: "approved.jsonl", Verdict.REJECTED: "rejected.jsonl"}
CARD = "README.md"


@dataclass(frozen=True)
class ExportSummary:
    out_dir: Path
    approved: int
    rejected: int

    def as_json(self) -> dict:
        return {"out": str(self.out_dir), "approved": self.approved, "rejected": self.rejected,
                "files": [*FILES.values(), CARD]}


def example(event: VideoReviewed) -> dict:
    """One training example."""
    return {
        "request_key": event.request_key, "sku": event.sku, "variant_id": event.variant_id,
        "verdict": event.verdict.value, "reason": event.reason.value if event.reason else None, "note": event.note,
        "reviewed_at": event.occurred_at.isoformat(), "reviewer": event.reviewer,
        "prompt": event.prompt, "product": event.product.model_dump(mode="json"),
        "video_url": event.video_url, "poster_url": event.poster_url,
        "quality": {"passed": event.quality.passed, "flagged": event.quality.flagged,
                    "attempts": event.quality.attempts, "scores": event.quality.scores},
        "template_id": event.template_id, "template_version": event.template_version, "style": event.style,
        "category": event.category, "model": event.model, "seed": event.seed,
        "causes": [c.value for c in event.causes], "rendered_at": event.rendered_at.isoformat(),
        "rerender_generation": event.rerender_generation,
    }


def counted(events: Iterable[VideoReviewed], *, since: datetime | None, until: datetime | None) -> list[VideoReviewed]:
    """The verdicts that count (first per request key) in [since, until], by review time."""
    events = list(events)
    keep = {row.request_key for row in rows_from(events, since=since, until=until)}
    first: dict[str, VideoReviewed] = {}
    for event in events:
        if event.request_key in keep and event.request_key not in first:
            first[event.request_key] = event
    return sorted(first.values(), key=lambda e: (e.occurred_at, e.request_key))


def export_examples(events: Iterable[VideoReviewed], out_dir: Path, *, since: datetime | None = None,
                    until: datetime | None = None) -> ExportSummary:
    """Write the two JSONL files and the dataset card into ``out_dir`` (created; files replaced)."""
    chosen = counted(events, since=since, until=until)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = Counter(e.verdict for e in chosen)
    for verdict, name in FILES.items():
        lines = b"".join(orjson.dumps(example(e)) + b"\n" for e in chosen if e.verdict is verdict)
        (out_dir / name).write_bytes(lines)
    (out_dir / CARD).write_text(dataset_card(chosen, since=since, until=until))
    return ExportSummary(out_dir, counts[Verdict.APPROVED], counts[Verdict.REJECTED])


def dataset_card(events: list[VideoReviewed], *, since: datetime | None, until: datetime | None) -> str:
    report = build_report(rows_from(events))
    causes = Counter(c.value for e in events for c in e.causes)
    reasons = "\n".join(f"| {r.reason} | {r.count} | {100 * r.share:.1f}% |" for r in report.reasons) or "| – | 0 | – |"
    first = min((e.occurred_at for e in events), default=None)
    last = max((e.occurred_at for e in events), default=None)
    window = f"{(since or first or datetime.now(UTC)).date()} – {(until or last or datetime.now(UTC)).date()}"
    rows = "\n".join(f"| {r.value} | {r.n} | {100 * r.rate:.1f}% ({100 * r.low:.1f}–{100 * r.high:.1f}%) |"
                     for r in report.by["template"])
    return f"""# skuvid review examples

Human verdicts on AI-generated product videos published by skuvid, exported by `skuvid review export` on
{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.

* Reviewed between: {window}
* Examples: {len(events)} — approved {report.overall.approved} (`approved.jsonl`), rejected
  {len(events) - report.overall.approved} (`rejected.jsonl`)
* Approval rate: {100 * report.overall.rate:.1f}% (95% Wilson CI {100 * report.overall.low:.1f}–{100 * report.overall.high:.1f}%)

## What a line holds

| field | meaning |
|---|---|
| `prompt` | the positive prompt the video was generated from |
| `product` | title, category, selling points, photo URL, brand as the reviewer saw them |
| `video_url`, `poster_url` | the MP4 (with its visible AI mark, AIGC metadata and C2PA manifest) and poster |
| `quality` | the automatic quality gate: passed, flagged (published below the gate), attempts, scores |
| `verdict`, `reason`, `note` | the human verdict; reason codes: wrong_product, visual_artefacts, garbled_text, unsafe, off_brand, other |
| `template_id`, `template_version`, `style`, `category`, `model`, `seed` | how the video was made |
| `causes` | why it was reviewed: flagged, rerender, new_template, sampled |
| `reviewer`, `reviewed_at`, `request_key` | who, when, which video (the request key is the AIGC ProduceID) |

## Reject reasons

| reason | count | share |
|---|---|---|
{reasons}

## Approval by template

| template | n | approved (95% CI) |
|---|---|---|
{rows}

## How it was sampled — read before training

Videos are reviewed for a cause: {', '.join(f'{k} {v}' for k, v in sorted(causes.items())) or 'none'}.
Flagged videos (below the quality gate), re-renders and the first renders of each template version are all
reviewed; the others only at the configured sample rate (stratified by category and template). The set
therefore over-represents weak videos: weight by cause before estimating production quality, and keep the
`causes` field when training a filter or reward model.

## Intended use and limits

* For: training and evaluating video quality filters and reward models, tuning prompt templates, auditing.
* Not for: anything about real people or products beyond their catalog data; the videos are AI-generated
  and labelled as such (visible mark, GB 45438-2025 metadata, C2PA credentials) and must stay labelled.
* One verdict per video by one reviewer: labels are noisy, especially `off_brand` and `other` (see `note`).
* Reviewer ids are internal pseudonyms; product fields come from the catalog at review time.
"""
