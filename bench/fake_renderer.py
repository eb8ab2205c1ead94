"""A real renderer process whose model is the ``FakeGenerator`` test double: ``python -m bench.fake_renderer``.

Everything but the model is the production path: Settings from the environment (``get_settings``), the real
``RenderJob`` (quality gate, AIGC labels, H.264 encoding), ``RendererService`` with the real publisher and
store, and ``skuvid.composition.serve`` itself (logging, signal handling, the shutdown deadline, the exit code
of a ``FatalError``). The only substitution is the job factory: ``composition.load_render_job`` is replaced
for this process by one that builds the job around a ``FakeGenerator`` (``run_renderer`` takes no factory
argument yet: README.md, "Reliability suite", proposes one).

Fault injection for the reliability suite, also in this process only:

* ``--crash-after-publish FILE``: when FILE exists right after the broker acknowledged a ``video.ready`` or
  ``video.failed``, the process deletes FILE and SIGKILLs itself — a crash exactly between publish and
  commit, which an outside ``kill`` hits only by luck.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from skuvid.settings import Settings, get_settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.fake_renderer", description=__doc__.splitlines()[0])
    parser.add_argument("--job-seconds", type=float, default=0.5, help="wall time of one clip (default 0.5)")
    parser.add_argument("--fail-marker", default=None, help="prompts containing it fail permanently")
    parser.add_argument("--transient-marker", default=None, help="prompts containing it fail transiently, always")
    parser.add_argument("--crash-after-publish", type=Path, default=None, metavar="FILE",
                        help="SIGKILL this process after an acknowledged outcome while FILE exists")
    return parser.parse_args(argv)


def fake_job_factory(args: argparse.Namespace):
    """A ``load_render_job`` replacement: the real job and gate around a ``FakeGenerator``."""

    def load_fake_render_job(settings: Settings):
        from bench.fake_generator import FakeGenerator
        from inference.clip_score import clip_from_settings
        from inference.quality import QualityGate
        from inference.render_job import RenderJob

        generator = FakeGenerator(settings.model, seconds=args.job_seconds, fail_marker=args.fail_marker,
                                  transient_marker=args.transient_marker)
        gate = QualityGate.from_settings(settings, clip_from_settings(settings))
        return RenderJob(settings, generator, gate)

    return load_fake_render_job


def arm_crash_after_publish(trigger: Path) -> None:
    """Make every acknowledged outcome check ``trigger``; when it exists: remove it, then SIGKILL ourselves."""
    from producers.publisher import Publisher
    from schemas.topics import VIDEO_FAILED, VIDEO_READY

    publish = Publisher.publish

    async def publish_then_maybe_crash(self, topic, event):
        metadata = await publish(self, topic, event)
        if topic in (VIDEO_READY, VIDEO_FAILED):
            try:
                trigger.unlink()
            except FileNotFoundError:
                return metadata
            print(f"fault injection: SIGKILL after publishing {topic.name} "
                  f"{getattr(event, 'request_key', '')}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return metadata

    Publisher.publish = publish_then_maybe_crash


def main(argv: list[str] | None = None) -> int:
    from skuvid import composition

    args = parse_args(argv)
    composition.load_render_job = fake_job_factory(args)
    if args.crash_after_publish is not None:
        arm_crash_after_publish(args.crash_after_publish)
    return composition.serve(get_settings(), "renderer")


if __name__ == "__main__":
    raise SystemExit(main())
