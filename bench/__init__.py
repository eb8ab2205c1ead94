"""Benchmarks runnable as ``python -m bench.<name>`` or ``skuvid bench <name> --json``; each returns a dict."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from skuvid.settings import Settings


def run_named(name: str, settings: Settings, *, full_size: bool = False) -> dict[str, Any]:
    if name == "prompts":
        from bench.prompts import run

        return run()
    if name == "planner":
        from bench.planner import run

        return run()
    if name == "planner_logic":
        from bench.planner_logic import run

        return run()
    if name == "fanout":
        from bench.fanout import run

        return run()
    if name == "experiments":
        from bench.experiments import run

        return run()
    if name == "postprocess":
        from bench.postprocess import run

        return run()
    if name == "api":
        from bench.api import run

        return run()
    if name == "gpu":
        from bench.gpu_suite import run

        return run(settings)
    if name == "renderer":
        from bench.renderer import run

        return run()
    if name == "cli":
        from bench.cli import run

        return run()
    if name == "inference":
        from bench.inference import run

        return run(settings, full_size=full_size, resolutions=("480p", "720p"), encode=_label_and_encode(settings))
    raise ValueError(f"unknown benchmark {name!r}")


def _label_and_encode(settings: Settings):
    """The renderer's post-processing (mark + AIGC metadata + H.264), timed as the benchmark's encode stage."""
    from inference.fonts import find_cjk_font
    from inference.labels import AigcLabel
    from inference.postprocess import finish_video

    font = find_cjk_font(settings.font_path)
    label = AigcLabel(ContentProducer=settings.label_content_producer, ProduceID="bench")

    def encode(frames) -> None:
        with tempfile.TemporaryDirectory(prefix="skuvid-bench-") as tmp:
            finish_video(frames, out_dir=Path(tmp), basename="bench", mark_text="AI生成", corner=settings.mark_corner,
                         font_path=font, captions=[], aigc=label, fps=settings.fps, crf=settings.x264_crf,
                         preset=settings.x264_preset)

    return encode
