"""The experiment report as one self-contained HTML file: tables and inline SVG charts, no script, no network.

Charts: per metric, the relative uplift of each treatment arm with its 95 % CI (fixed horizon), the always-valid
CI behind it and the CUPED CI under it; and the cumulative relative uplift of the primary metric day by day,
with the pointwise CI and the always-valid band. Everything is drawn from the ``Report`` only; values that are
not finite are left out, bands that are unbounded are clipped to the chart.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable

from experiments.report import (
    METRIC_LABELS,
    METRICS,
    Report,
    TimelinePoint,
    diff_text,
    p_text,
    pct_text,
    rel_text,
    value_text,
)

# Colours are part of the contract with tests/unit/test_experiments_html.py (it looks for them on screen).
FIXED = "#1f5fbf"  # fixed-horizon CI bar and point
SEQUENTIAL = "#9cc3f5"  # always-valid CI (behind)
CUPED = "#2f9e44"  # CUPED CI
LINE = "#d9480f"  # cumulative uplift line
BAND = "#ffc9a0"  # pointwise CI band
SEQ_BAND = "#ffe8d6"  # always-valid band
WIDTH = 760

CSS = """
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,'Noto Sans CJK SC','WenQuanYi Micro Hei',sans-serif;
margin:24px;color:#1c1c1c;max-width:1100px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
table{border-collapse:collapse;margin:8px 0}th,td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f4f4f4}
.warn{background:#fff4e5;border-left:4px solid #f08c00;padding:6px 10px;margin:4px 0}
.ok{color:#2b8a3e}.muted{color:#666}svg{display:block;margin:6px 0 18px}
.sig{font-weight:600}
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _finite(*values: float) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


class _Scale:
    """Linear map from data values to pixels."""

    def __init__(self, lo: float, hi: float, px_lo: float, px_hi: float) -> None:
        if not hi > lo:
            lo, hi = lo - 0.01, hi + 0.01
        self.lo, self.hi, self.px_lo, self.px_hi = lo, hi, px_lo, px_hi

    def __call__(self, value: float) -> float:
        value = min(max(value, self.lo), self.hi)
        return self.px_lo + (value - self.lo) / (self.hi - self.lo) * (self.px_hi - self.px_lo)


def _tick_label(tick: float, ticks: list[float]) -> str:
    """Percent labels with a decimal only when the ticks need one (steps of 2.5 %, 0.5 % …)."""
    whole = all(abs(t * 100 - round(t * 100)) < 1e-9 for t in ticks)
    return f"{tick:+.0%}" if whole else f"{tick:+.1%}"


def _ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    span = hi - lo
    if not span > 0:
        return [lo]
    raw = span / count
    step = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * step >= raw:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _range(values: Iterable[float], pad: float = 0.1) -> tuple[float, float]:
    finite = [v for v in values if _finite(v)] + [0.0]
    lo, hi = min(finite), max(finite)
    margin = (hi - lo) * pad or 0.05
    return lo - margin, hi + margin


def uplift_chart(report: Report, metric) -> str:
    """One row per treatment arm: relative uplift point, fixed CI bar, always-valid CI behind, CUPED below."""
    rows = [r for r in report.results if r.metric is metric]
    left, right, row_h, top = 170, WIDTH - 30, 46, 26
    height = top + row_h * max(1, len(rows)) + 46
    bounds = []
    for r in rows:
        bounds += [r.fixed.relative.ci_low, r.fixed.relative.ci_high]
        if r.cuped is not None:
            bounds += [r.cuped.comparison.relative.ci_low, r.cuped.comparison.relative.ci_high]
    lo, hi = _range(bounds)
    for r in rows:  # always-valid bounds widen the axis only within reason (they may be unbounded early on)
        for v in (r.sequential.ci_low, r.sequential.ci_high):
            if _finite(v):
                lo, hi = min(lo, max(v, lo - (hi - lo))), max(hi, min(v, hi + (hi - lo)))
    x = _Scale(lo, hi, left, right)
    parts = [f'<svg class="chart" data-chart="uplift-{_esc(metric.value)}" width="{WIDTH}" height="{height}" '
             f'viewBox="0 0 {WIDTH} {height}" xmlns="http://www.w3.org/2000/svg" role="img" '
             f'aria-label="relative uplift of {_esc(metric.value)} with 95% CIs">',
             f'<text x="{left}" y="16" font-size="13" font-weight="600">{_esc(METRIC_LABELS[metric])}: relative '
             f'uplift vs control (95% CI)</text>']
    axis_y = top + row_h * max(1, len(rows)) + 4
    ticks = _ticks(lo, hi)
    for tick in ticks:
        tx = x(tick)
        parts.append(f'<line x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{axis_y}" stroke="#eee"/>')
        parts.append(f'<text x="{tx:.1f}" y="{axis_y + 16}" font-size="11" text-anchor="middle" fill="#555">'
                     f'{_tick_label(tick, ticks)}</text>')
    zero = x(0.0)
    parts.append(f'<line x1="{zero:.1f}" y1="{top - 4}" x2="{zero:.1f}" y2="{axis_y}" stroke="#333" '
                 f'stroke-dasharray="4 3"/>')
    for i, r in enumerate(rows):
        cy = top + row_h * i + row_h / 2 - 6
        parts.append(f'<text x="8" y="{cy + 4:.1f}" font-size="12">{_esc(r.arm_id)}</text>')
        s_lo, s_hi = r.sequential.ci_low, r.sequential.ci_high
        if _finite(r.fixed.relative.value) and not (math.isnan(s_lo) or math.isnan(s_hi)):
            parts.append(f'<rect class="sequential-ci" x="{x(s_lo):.1f}" y="{cy - 7:.1f}" '
                         f'width="{max(1.0, x(s_hi) - x(s_lo)):.1f}" height="14" fill="{SEQUENTIAL}" rx="3">'
                         f'<title>always-valid CI {pct_text(s_lo)} to {pct_text(s_hi)}</title></rect>')
        f = r.fixed.relative
        if _finite(f.value, f.ci_low, f.ci_high):
            parts.append(f'<line class="fixed-ci" x1="{x(f.ci_low):.1f}" y1="{cy:.1f}" x2="{x(f.ci_high):.1f}" '
                         f'y2="{cy:.1f}" stroke="{FIXED}" stroke-width="4"/>')
            for end in (f.ci_low, f.ci_high):
                parts.append(f'<line x1="{x(end):.1f}" y1="{cy - 8:.1f}" x2="{x(end):.1f}" y2="{cy + 8:.1f}" '
                             f'stroke="{FIXED}" stroke-width="2"/>')
            parts.append(f'<circle cx="{x(f.value):.1f}" cy="{cy:.1f}" r="5" fill="{FIXED}"><title>'
                         f'{rel_text(f.value, f.ci_low, f.ci_high)}, p = {p_text(r.fixed.absolute.p_value)}'
                         f'</title></circle>')
        if r.cuped is not None:
            c = r.cuped.comparison.relative
            if _finite(c.value, c.ci_low, c.ci_high):
                parts.append(f'<line class="cuped-ci" x1="{x(c.ci_low):.1f}" y1="{cy + 14:.1f}" '
                             f'x2="{x(c.ci_high):.1f}" y2="{cy + 14:.1f}" stroke="{CUPED}" stroke-width="3"/>')
                parts.append(f'<circle cx="{x(c.value):.1f}" cy="{cy + 14:.1f}" r="3.5" fill="{CUPED}"/>')
    legend_y = height - 4
    parts.append(
        f'<g font-size="11"><rect x="{left}" y="{legend_y - 9}" width="14" height="8" fill="{FIXED}"/>'
        f'<text x="{left + 18}" y="{legend_y}">fixed horizon</text>'
        f'<rect x="{left + 110}" y="{legend_y - 9}" width="14" height="8" fill="{SEQUENTIAL}"/>'
        f'<text x="{left + 128}" y="{legend_y}">always valid (mSPRT)</text>'
        f'<rect x="{left + 260}" y="{legend_y - 9}" width="14" height="8" fill="{CUPED}"/>'
        f'<text x="{left + 278}" y="{legend_y}">CUPED</text></g>'
    )
    parts.append("</svg>")
    return "".join(parts)


def timeline_chart(report: Report, arm_id: str, points: list[TimelinePoint]) -> str:
    """Cumulative relative uplift of the primary metric by day, pointwise CI band and always-valid band."""
    left, right, top, bottom = 60, WIDTH - 20, 28, 250
    height = bottom + 40
    usable = [p for p in points if _finite(p.relative.value, p.relative.ci_low, p.relative.ci_high)]
    lo, hi = _range([v for p in usable for v in (p.relative.ci_low, p.relative.ci_high)])
    span = hi - lo
    seq = [v for p in usable for v in (p.sequential_low, p.sequential_high) if _finite(v)]
    if seq:  # the always-valid band is wide early on: show it, but at most one span beyond the CIs
        lo, hi = max(min(lo, min(seq)), lo - span), min(max(hi, max(seq)), hi + span)
    n = len(points)
    index = {p.day: i for i, p in enumerate(points)}
    x = _Scale(0, max(1, n - 1), left, right)
    y = _Scale(lo, hi, bottom, top)
    metric = report.experiment.primary_metric
    parts = [f'<svg class="chart" data-chart="timeline-{_esc(arm_id)}" width="{WIDTH}" height="{height}" '
             f'viewBox="0 0 {WIDTH} {height}" xmlns="http://www.w3.org/2000/svg" role="img" '
             f'aria-label="cumulative uplift of {_esc(metric.value)} over time">',
             f'<text x="{left}" y="16" font-size="13" font-weight="600">{_esc(arm_id)}: cumulative relative uplift '
             f'of {_esc(METRIC_LABELS[metric])} by day</text>']
    ticks = _ticks(lo, hi)
    for tick in ticks:
        ty = y(tick)
        parts.append(f'<line x1="{left}" y1="{ty:.1f}" x2="{right}" y2="{ty:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{ty + 4:.1f}" font-size="11" text-anchor="end" fill="#555">'
                     f'{_tick_label(tick, ticks)}</text>')
    if usable:
        def band(low_of, high_of, colour: str, name: str) -> str:
            pts = [p for p in usable if not (math.isnan(low_of(p)) or math.isnan(high_of(p)))]
            if len(pts) < 2:
                return ""
            upper = [f"{x(index[p.day]):.1f},{y(high_of(p)):.1f}" for p in pts]
            lower = [f"{x(index[p.day]):.1f},{y(low_of(p)):.1f}" for p in reversed(pts)]
            return f'<polygon class="{name}" points="{" ".join(upper + lower)}" fill="{colour}"/>'

        parts.append(band(lambda p: p.sequential_low, lambda p: p.sequential_high, SEQ_BAND, "sequential-band"))
        parts.append(band(lambda p: p.relative.ci_low, lambda p: p.relative.ci_high, BAND, "ci-band"))
        path = " ".join(f"{x(index[p.day]):.1f},{y(p.relative.value):.1f}" for p in usable)
        parts.append(f'<polyline class="uplift-line" points="{path}" fill="none" stroke="{LINE}" stroke-width="2.5"/>')
        for p in usable:
            parts.append(f'<circle cx="{x(index[p.day]):.1f}" cy="{y(p.relative.value):.1f}" r="3" fill="{LINE}">'
                         f'<title>{_esc(p.day)}: {pct_text(p.relative.value)} [{pct_text(p.relative.ci_low)}, '
                         f'{pct_text(p.relative.ci_high)}], always-valid p = {p_text(p.sequential_p)}</title></circle>')
    zero = y(0.0)
    parts.append(f'<line x1="{left}" y1="{zero:.1f}" x2="{right}" y2="{zero:.1f}" stroke="#333" '
                 f'stroke-dasharray="4 3"/>')
    step = max(1, math.ceil(n / 8))
    for i in range(0, n, step):
        parts.append(f'<text x="{x(i):.1f}" y="{bottom + 16}" font-size="11" text-anchor="middle" fill="#555">'
                     f'{_esc(points[i].day[5:])}</text>')
    parts.append(
        f'<g font-size="11"><rect x="{left}" y="{height - 13}" width="14" height="8" fill="{BAND}"/>'
        f'<text x="{left + 18}" y="{height - 5}">95% CI (one look)</text>'
        f'<rect x="{left + 140}" y="{height - 13}" width="14" height="8" fill="{SEQ_BAND}" stroke="#e8c8a8"/>'
        f'<text x="{left + 158}" y="{height - 5}">always valid (daily looks)</text></g>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _table(header: list[str], rows: list[list[str]], raw: bool = False) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if raw else _esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: Report) -> str:
    """The whole report page."""
    exp = report.experiment
    out = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Experiment {_esc(exp.experiment_id)}</title><style>{CSS}</style></head><body>",
        f"<h1>Experiment {_esc(exp.experiment_id)}</h1>",
        f'<p class="muted">{_esc(exp.description)} primary metric <b>{_esc(exp.primary_metric.value)}</b>, '
        f"control <b>{_esc(exp.control.arm_id)}</b>, {exp.starts_at:%Y-%m-%d} to {exp.ends_at:%Y-%m-%d}, "
        f"MDE {exp.minimum_detectable_effect:+.0%}, alpha {exp.alpha:g}. Source: {_esc(report.source)}; "
        f"generated {_esc(report.generated_at)}.</p>",
    ]
    out += [f'<div class="warn">{_esc(w)}</div>' for w in report.warnings] or ['<p class="ok">No warnings.</p>']
    out.append("<h2>Arms</h2>")
    out.append(_table(
        ["arm", "variant", "weight", "users", "exposures", "plays", "dwell s/user", "add-to-cart", "order conv."],
        [[a.arm_id, a.variant_id, f"{a.weight:g}", str(a.users), str(a.exposures), str(a.plays),
          value_text(METRICS[0], a.dwell_mean_s), pct_text(a.add_to_cart_rate, False), pct_text(a.order_rate, False)]
         for a in report.arms]))
    srm = report.srm
    out.append(f"<p>Sample ratio: chi-square {srm.chi2:.3g}, p = {p_text(srm.p_value)} "
               f"{'<b>MISMATCH</b>' if srm.mismatch else '(consistent with the declared split)'}.</p>")
    out.append("<h2>Uplift by metric</h2>")
    for metric in METRICS:
        out.append(uplift_chart(report, metric))
    rows = []
    for r in report.results:
        f, s, c = r.fixed, r.sequential, r.cuped
        sig = f.absolute.p_value < exp.alpha if _finite(f.absolute.p_value) else False
        rows.append([_esc(r.arm_id), _esc(METRIC_LABELS[r.metric]), value_text(r.metric, f.control),
                     value_text(r.metric, f.treatment), _esc(diff_text(r.metric, f.absolute)),
                     f'<span class="{"sig" if sig else ""}">{p_text(f.absolute.p_value)}</span>',
                     rel_text(f.relative.value, f.relative.ci_low, f.relative.ci_high),
                     f"[{pct_text(s.ci_low)}, {pct_text(s.ci_high)}]", p_text(s.p_value),
                     "n/a" if c is None else rel_text(c.comparison.relative.value, c.comparison.relative.ci_low,
                                                      c.comparison.relative.ci_high),
                     "n/a" if c is None else pct_text(-c.variance_reduction),
                     "n/a" if not _finite(r.power.achieved_mde) else pct_text(r.power.achieved_mde)])
    out.append(_table(["arm", "metric", "control", "treatment", "abs uplift [95% CI]", "p", "rel uplift [95% CI]",
                       "always-valid CI", "always-valid p", "CUPED rel [95% CI]", "CUPED var", "MDE now"], rows,
                      raw=True))
    out.append(f"<h2>Cumulative uplift over time ({_esc(exp.primary_metric.value)})</h2>")
    for arm_id, points in report.timeline.items():
        out.append(timeline_chart(report, arm_id, points))
    if report.categories:
        out.append("<h2>By category (fixed horizon)</h2>")
        out.append(_table(
            ["category", "arm", "metric", "users c/t", "control", "treatment", "rel uplift [95% CI]", "p"],
            [[c.category, c.arm_id, METRIC_LABELS[c.metric], f"{c.fixed.n_control}/{c.fixed.n_treatment}",
              value_text(c.metric, c.fixed.control), value_text(c.metric, c.fixed.treatment),
              rel_text(c.fixed.relative.value, c.fixed.relative.ci_low, c.fixed.relative.ci_high),
              p_text(c.fixed.absolute.p_value)] for c in report.categories]))
    out.append('<p class="muted">Fixed-horizon results are valid when read once at the planned end; the '
               "always-valid ones (mSPRT) may be read every day. Per-user metrics; relative uplift by the delta "
               "method.</p></body></html>")
    return "\n".join(out) + "\n"
