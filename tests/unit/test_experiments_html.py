"""The HTML report is self-contained, escapes what it shows, and its charts render in a real headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments import html as report_html
from experiments.aggregate import Aggregator
from experiments.report import analyse
from experiments.simulate import SimulationSpec, simulate_events
from schemas.engagement import Arm, Experiment, Metric

EXP = Experiment(
    experiment_id="exp-html", starts_at=datetime(2026, 12, 1, tzinfo=UTC), ends_at=datetime(2026, 12, 6, tzinfo=UTC),
    arms=[Arm(arm_id="control", variant_id="none", weight=0.4), Arm(arm_id="daily", variant_id="daily-a", weight=0.3),
          Arm(arm_id="promo", variant_id="promo-a", weight=0.3)],
    primary_metric=Metric.ADD_TO_CART,
)


@pytest.fixture(scope="module")
def page() -> str:
    spec = SimulationSpec(EXP, users=5000, days=5, add_to_cart={"daily": 0.2}, seed=4,
                          categories=("3c", "<b>toys</b>"))
    return report_html.render_html(analyse(EXP, Aggregator().add_all(simulate_events(spec)).totals(), "test"))


def test_page_is_self_contained_and_escaped(page: str):
    assert "<script" not in page and "<link" not in page and "src=" not in page
    assert set(re.findall(r"https?://[^\"' ]+", page)) == {"http://www.w3.org/2000/svg"}  # SVG namespace only
    assert "&lt;b&gt;toys&lt;/b&gt;" in page and "<b>toys</b>" not in page
    charts = re.findall(r'data-chart="([^"]+)"', page)
    assert charts == ["uplift-dwell", "uplift-add_to_cart", "uplift-order", "timeline-daily", "timeline-promo"]


def chromium() -> str:
    path = shutil.which("chromium")
    assert path, "the HTML test needs Debian's chromium: run `make system` (apt-get install chromium)"
    return path


def screenshot(html_path: Path, png: Path, profile: Path) -> np.ndarray:
    subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         f"--user-data-dir={profile}", "--window-size=1200,3200", f"--screenshot={png}", html_path.as_uri()],
        check=True, capture_output=True, timeout=60,
    )
    return np.asarray(Image.open(png).convert("RGB"))


def pixels_of(image: np.ndarray, colour: str) -> int:
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int(np.sum(np.all(np.abs(image.astype(int) - rgb) <= 2, axis=-1)))


def test_charts_render_in_headless_chromium(page: str, tmp_path: Path):
    html_path = tmp_path / "report.html"
    html_path.write_text(page, encoding="utf-8")
    image = screenshot(html_path, tmp_path / "shot.png", tmp_path / "profile")
    assert image.shape[1] == 1200
    drawn = {name: pixels_of(image, colour) for name, colour in [
        ("fixed CI bars", report_html.FIXED), ("always-valid CI", report_html.SEQUENTIAL),
        ("CUPED CI", report_html.CUPED), ("uplift line", report_html.LINE), ("CI band", report_html.BAND),
        ("always-valid band", report_html.SEQ_BAND)]}
    assert all(count > 150 for count in drawn.values()), drawn

    blank = tmp_path / "broken.html"  # the check can fail: the same page with its charts cut out draws none
    blank.write_text(re.sub(r"<svg.*?</svg>", "", page, flags=re.S), encoding="utf-8")
    image = screenshot(blank, tmp_path / "broken.png", tmp_path / "profile")
    assert pixels_of(image, report_html.FIXED) + pixels_of(image, report_html.BAND) == 0
