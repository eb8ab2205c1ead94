"""The review report: approval rate per template, style, category and model, with counts and 95 % Wilson
intervals (``statsmodels.stats.proportion.proportion_confint(method="wilson")``), and the most common reject
reasons — as JSON, as text, and as one self-contained HTML file with inline SVG charts (no script).

Input is ``video.reviewed`` (the first verdict per request key counts), which carries every dimension, so
``skuvid review report`` and ``GET /v1/review/report`` compute the same thing from the same events.

Read the rates with their sampling in mind: flagged videos and new template versions are reviewed in full,
the rest at the sample rate, so the overall rate over-weights the risky ones; per-dimension rates compare
like with like only within a cause (the JSON has ``by_cause`` for that).
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from schemas.events import Verdict, VideoReviewed

DIMENSIONS = ("template", "style", "category", "model")
LABELS = {"template": "Template", "style": "Style", "category": "Category", "model": "Model", "cause": "Why queued"}
ALPHA = 0.05
TOP_REASONS = 6
UNKNOWN = "(unknown)"


@dataclass(frozen=True)
class Row:
    """One counted verdict, flattened to the report's dimensions."""

    request_key: str
    sku: str
    approved: bool
    reason: str | None
    template: str
    style: str
    category: str
    model: str
    causes: tuple[str, ...]
    reviewed_at: datetime

    @classmethod
    def of(cls, event: VideoReviewed) -> Row:
        return cls(
            request_key=event.request_key, sku=event.sku, approved=event.verdict is Verdict.APPROVED,
            reason=event.reason.value if event.reason else None, template=event.template_id,
            style=event.style or UNKNOWN, category=event.category or UNKNOWN, model=event.model,
            causes=tuple(c.value for c in event.causes), reviewed_at=event.occurred_at,
        )


def rows_from(events: Iterable[VideoReviewed], *, since: datetime | None = None,
              until: datetime | None = None) -> list[Row]:
    """The first verdict per request key (in the order given: log order), reviewed in [since, until]."""
    seen: dict[str, Row] = {}
    for event in events:
        if event.request_key in seen:
            continue
        row = Row.of(event)
        seen[event.request_key] = row
    return [r for r in seen.values() if (since is None or r.reviewed_at >= since)
            and (until is None or r.reviewed_at <= until)]


@dataclass(frozen=True)
class Rate:
    value: str
    n: int
    approved: int
    rate: float
    low: float
    high: float


@dataclass(frozen=True)
class ReasonCount:
    reason: str
    count: int
    share: float  # of all rejections


@dataclass(frozen=True)
class ReviewReport:
    since: date | None
    until: date | None
    overall: Rate
    by: dict[str, list[Rate]]
    reasons: list[ReasonCount]
    reasons_by_template: dict[str, list[ReasonCount]]
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def wilson(approved: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """The Wilson score interval of ``approved`` out of ``n`` (0, 1 when n is 0)."""
    if n == 0:
        return 0.0, 1.0
    from statsmodels.stats.proportion import proportion_confint  # noqa: PLC0415 - a heavy import, needed here only

    low, high = proportion_confint(approved, n, alpha=alpha, method="wilson")
    return float(low), float(high)


def rate_of(value: str, rows: list[Row]) -> Rate:
    n, approved = len(rows), sum(r.approved for r in rows)
    low, high = wilson(approved, n)
    return Rate(value, n, approved, approved / n if n else 0.0, low, high)


def reasons_of(rows: Iterable[Row], top: int = TOP_REASONS) -> list[ReasonCount]:
    counts = Counter(r.reason for r in rows if not r.approved and r.reason)
    total = sum(counts.values())
    return [ReasonCount(reason, count, count / total) for reason, count in
            sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]


def build_report(rows: list[Row], *, since: date | None = None, until: date | None = None) -> ReviewReport:
    by: dict[str, list[Rate]] = {}
    for dimension in (*DIMENSIONS, "cause"):
        groups: dict[str, list[Row]] = {}
        for row in rows:
            for value in (row.causes if dimension == "cause" else (getattr(row, dimension),)):
                groups.setdefault(value, []).append(row)
        by[dimension] = sorted((rate_of(v, g) for v, g in groups.items()), key=lambda r: (-r.n, r.value))
    templates: dict[str, list[Row]] = {}
    for row in rows:
        templates.setdefault(row.template, []).append(row)
    return ReviewReport(
        since=since, until=until, overall=rate_of("all", rows), by=by, reasons=reasons_of(rows),
        reasons_by_template={t: reasons_of(g, top=3) for t, g in sorted(templates.items()) if reasons_of(g)},
    )


def _rate_json(rate: Rate) -> dict:
    return {"value": rate.value, "n": rate.n, "approved": rate.approved, "rejected": rate.n - rate.approved,
            "rate": round(rate.rate, 6), "ci95": [round(rate.low, 6), round(rate.high, 6)]}


def _reason_json(reason: ReasonCount) -> dict:
    return {"reason": reason.reason, "count": reason.count, "share": round(reason.share, 6)}


def report_json(report: ReviewReport) -> dict:
    return {
        "since": report.since.isoformat() if report.since else None,
        "until": report.until.isoformat() if report.until else None,
        "generated_at": report.generated_at.isoformat(),
        "interval": "wilson 95%",
        "overall": _rate_json(report.overall),
        **{f"by_{dimension}": [_rate_json(r) for r in report.by[dimension]] for dimension in report.by},
        "reject_reasons": [_reason_json(r) for r in report.reasons],
        "reject_reasons_by_template": {t: [_reason_json(r) for r in rs]
                                       for t, rs in report.reasons_by_template.items()},
    }


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def render_text(report: ReviewReport) -> str:
    o = report.overall
    lines = [f"review verdicts: {o.n}, approved {o.approved} ({_pct(o.rate)}, 95% CI {_pct(o.low)}-{_pct(o.high)})"]
    for dimension, rates in report.by.items():
        lines.append(f"\n{LABELS[dimension]:<24} {'n':>6} {'approved':>9} {'rate':>7}  95% CI (Wilson)")
        for r in rates:
            lines.append(f"  {r.value[:22]:<22} {r.n:>6} {r.approved:>9} {_pct(r.rate):>7}  {_pct(r.low)}-{_pct(r.high)}")
    lines.append("\nmost common reject reasons")
    lines += [f"  {r.reason:<22} {r.count:>6} {_pct(r.share):>7}" for r in report.reasons] or ["  none"]
    return "\n".join(lines) + "\n"


# --- HTML ------------------------------------------------------------------------------------------------

BAR = "#1f5fbf"
CI = "#1c1c1c"
REJECT = "#c92a2a"
WIDTH = 760
CSS = """
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,'Noto Sans CJK SC','WenQuanYi Micro Hei',sans-serif;
margin:24px;color:#1c1c1c;max-width:1100px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
table{border-collapse:collapse;margin:8px 0}th,td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f4f4f4}.muted{color:#666}svg{display:block;margin:6px 0 18px}
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def rate_chart(name: str, rates: list[Rate]) -> str:
    """Horizontal bars: approval rate per value, the Wilson interval as a whisker, n at the end."""
    label_w, row_h, top = 190, 22, 24
    plot_w = WIDTH - label_w - 70
    height = top + row_h * max(len(rates), 1) + 24
    parts = [f'<svg class="chart" data-chart="rate-{_esc(name)}" width="{WIDTH}" height="{height}" '
             f'viewBox="0 0 {WIDTH} {height}" xmlns="http://www.w3.org/2000/svg" role="img" '
             f'aria-label="approval rate by {_esc(name)}">']
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        x = label_w + tick * plot_w
        parts.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{height - 20}" stroke="#ddd"/>'
                     f'<text x="{x:.1f}" y="{top - 10}" font-size="11" text-anchor="middle">{int(tick * 100)}%</text>')
    for i, r in enumerate(rates):
        y = top + i * row_h
        x0, bar = label_w, r.rate * plot_w
        low, high = label_w + r.low * plot_w, label_w + r.high * plot_w
        mid = y + row_h / 2
        parts.append(
            f'<text x="{label_w - 8}" y="{mid + 4:.1f}" font-size="12" text-anchor="end">{_esc(r.value[:28])}</text>'
            f'<rect x="{x0}" y="{y + 4}" width="{bar:.1f}" height="{row_h - 8}" fill="{BAR}" opacity="0.75">'
            f'<title>{_esc(r.value)}: {r.approved}/{r.n} = {_pct(r.rate)} (95% CI {_pct(r.low)}-{_pct(r.high)})'
            f'</title></rect>'
            f'<line x1="{low:.1f}" y1="{mid:.1f}" x2="{high:.1f}" y2="{mid:.1f}" stroke="{CI}" stroke-width="1.5"/>'
            f'<line x1="{low:.1f}" y1="{mid - 5:.1f}" x2="{low:.1f}" y2="{mid + 5:.1f}" stroke="{CI}"/>'
            f'<line x1="{high:.1f}" y1="{mid - 5:.1f}" x2="{high:.1f}" y2="{mid + 5:.1f}" stroke="{CI}"/>'
            f'<text x="{label_w + plot_w + 8}" y="{mid + 4:.1f}" font-size="11">n={r.n}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def reasons_chart(reasons: list[ReasonCount]) -> str:
    label_w, row_h, top = 190, 22, 8
    plot_w = WIDTH - label_w - 90
    height = top + row_h * max(len(reasons), 1) + 8
    most = max((r.count for r in reasons), default=1)
    parts = [f'<svg class="chart" data-chart="reasons" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} '
             f'{height}" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="reject reasons">']
    for i, r in enumerate(reasons):
        y = top + i * row_h
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 15}" font-size="12" text-anchor="end">{_esc(r.reason)}</text>'
            f'<rect x="{label_w}" y="{y + 4}" width="{r.count / most * plot_w:.1f}" height="{row_h - 8}" '
            f'fill="{REJECT}" opacity="0.75"/>'
            f'<text x="{label_w + r.count / most * plot_w + 6:.1f}" y="{y + 15}" font-size="11">{r.count} '
            f'({_pct(r.share)})</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _table(rates: list[Rate]) -> str:
    head = "<tr><th>value</th><th>n</th><th>approved</th><th>rejected</th><th>rate</th><th>95% CI</th></tr>"
    body = "".join(f"<tr><td>{_esc(r.value)}</td><td>{r.n}</td><td>{r.approved}</td><td>{r.n - r.approved}</td>"
                   f"<td>{_pct(r.rate)}</td><td>{_pct(r.low)} – {_pct(r.high)}</td></tr>" for r in rates)
    return f"<table>{head}{body}</table>"


def render_html(report: ReviewReport) -> str:
    o = report.overall
    window = f"{report.since or 'start'} – {report.until or 'now'}"
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>skuvid review report</title>'
        f"<style>{CSS}</style></head><body>",
        f"<h1>Review report</h1><p class=\"muted\">{_esc(window)} · generated "
        f"{_esc(report.generated_at.strftime('%Y-%m-%d %H:%M UTC'))} · intervals: Wilson 95%</p>",
        f'<p id="overall">{o.n} verdicts, {o.approved} approved: <b>{_pct(o.rate)}</b> '
        f"(95% CI {_pct(o.low)} – {_pct(o.high)})</p>",
        '<p class="muted">Flagged videos and new template versions are reviewed in full, the rest sampled: compare '
        "rates within a cause (last section).</p>",
    ]
    for dimension in (*DIMENSIONS, "cause"):
        rates = report.by[dimension]
        parts += [f"<h2>Approval rate by {_esc(LABELS[dimension].lower())}</h2>", rate_chart(dimension, rates),
                  _table(rates)]
    parts += ["<h2>Most common reject reasons</h2>", reasons_chart(report.reasons) if report.reasons else
              '<p class="muted">No rejections.</p>']
    if report.reasons_by_template:
        rows = "".join(f"<tr><td>{_esc(t)}</td><td>{_esc(', '.join(f'{r.reason} ({r.count})' for r in rs))}</td></tr>"
                       for t, rs in report.reasons_by_template.items())
        parts.append(f"<h3>Per template</h3><table><tr><th>template</th><th>top reasons</th></tr>{rows}</table>")
    parts.append("</body></html>")
    return "".join(parts)
