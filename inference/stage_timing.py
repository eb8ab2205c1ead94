"""Stage durations of one render, for ``skuvid_stage_seconds{stage}``, without changing the render code.

Two sources, both reporting ``observe(stage, seconds)`` (``Metrics.observe_stage``):

* ``StageProgress`` — a ``RenderJob.render(progress=…)`` callback. Each progress report starts a stage and
  ends the previous one: ``image_fetch``, ``quality_gate`` and ``encode`` (labelling, H.264, poster). It also
  measures the GPU time of the job (generation and quality gate) for the cost counters, and can mark those
  spans busy on a ``GpuClock``.
* ``PipelineStageHooks`` — module hooks on a diffusers pipeline's text encoder, transformer(s) and VAE, for
  the stages inside one pipeline call: ``text_encode``, ``denoise`` and ``vae_decode``. On CUDA each span
  ends with ``torch.cuda.synchronize()`` (kernels run asynchronously; without it GPU time would be counted in
  whatever stage synchronises next): one sync per text-encoder and transformer call, negligible next to a
  denoising step.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

Observe = Callable[[str, float], None]

# RenderJob's progress labels (by prefix) -> stage; None: a span of its own that is not a stage (the
# generation's parts come from PipelineStageHooks). GPU_LABELS: spans counted as GPU time.
PROGRESS_STAGES: dict[str, str | None] = {
    "fetching image": "image_fetch",
    "generating": None,
    "quality gate": "quality_gate",
    "labelling and encoding": "encode",
}
GPU_LABELS = ("generating",)  # busy ratio and cost count generation: the GPU's reason to exist


class StageProgress:
    """A ``progress(stage, step, total)`` callback that times the render job's stages.

    Use one per job, around the ``render`` call, so the last stage ends when ``render`` returns or raises::

        with StageProgress(metrics.observe_stage, gpu_clock=metrics.gpu_clock) as progress:
            rendered = await asyncio.to_thread(job.render, request, out_dir, progress=progress)
        metrics.charge("ready", progress.gpu_seconds, settings.gpu_price_cny_per_hour)

    Unknown labels end the current span and start an untimed one.
    """

    def __init__(self, observe: Observe, *, gpu_clock: Any = None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.observe = observe
        self.gpu_clock = gpu_clock
        self.clock = clock
        self.gpu_seconds = 0.0
        self._label: str | None = None
        self._since = 0.0

    def __call__(self, label: str, step: int | None = None, total: int | None = None) -> None:
        key = _label_key(label)
        if key == self._label:
            return  # a denoising step, or the same stage reported again
        self._end()
        self._label, self._since = key, self.clock()
        if key in GPU_LABELS and self.gpu_clock is not None:
            self.gpu_clock.busy_begin()

    def close(self) -> None:
        """End the stage in progress (idempotent)."""
        self._end()
        self._label = None

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _end(self) -> None:
        if self._label is None:
            return
        seconds = self.clock() - self._since
        if self._label in GPU_LABELS:
            self.gpu_seconds += seconds
            if self.gpu_clock is not None:
                self.gpu_clock.busy_end()
        stage = PROGRESS_STAGES.get(self._label)
        if stage is not None:
            self.observe(stage, seconds)


def _label_key(label: str) -> str:
    for prefix in PROGRESS_STAGES:
        if label.startswith(prefix):
            return prefix
    return label


class PipelineStageHooks:
    """Times ``text_encode``, ``denoise`` and ``vae_decode`` inside each call of a diffusers video pipeline.

    ``attach(pipe, observe)`` once after loading (``VideoGenerator.t2v``: the image-to-video pipeline shares
    its modules, so both are covered); ``detach()`` removes the hooks. A span runs from the first call of a
    module to the end of its last call within one pipeline call (text encoder: prompt and negative prompt;
    transformer: every step, CFG halves and the scheduler between them); the three are observed when the VAE
    decode ends. A call that fails before the decode observes nothing.
    """

    def __init__(self, pipe: Any, observe: Observe, *, synchronize: bool = True,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.pipe = pipe
        self.observe = observe
        self.synchronize = synchronize
        self.clock = clock
        self._handles: list[Any] = []
        self._vae_decode: Any = None
        self._spans: dict[str, list[float]] = {}

    @classmethod
    def attach(cls, pipe: Any, observe: Observe, **kwargs: Any) -> PipelineStageHooks:
        hooks = cls(pipe, observe, **kwargs)
        hooks._attach()
        return hooks

    def _attach(self) -> None:
        self._hook("text_encode", self.pipe.text_encoder)
        for name in ("transformer", "transformer_2"):
            module = getattr(self.pipe, name, None)
            if module is not None:
                self._hook("denoise", module)
        vae = self.pipe.vae
        decode = vae.decode
        self._vae_decode = decode

        def timed_decode(*args: Any, **kwargs: Any) -> Any:
            started = self._now()
            result = decode(*args, **kwargs)
            self._spans["vae_decode"] = [started, self._now(sync=True)]
            self._flush()
            return result

        vae.decode = timed_decode

    def _hook(self, stage: str, module: Any) -> None:
        def before(_module: Any, _args: Any) -> None:
            if stage == "text_encode" and "denoise" in self._spans:
                self._spans.clear()  # a new pipeline call after one that failed mid-way
            self._spans.setdefault(stage, [self._now(), 0.0])

        def after(_module: Any, _args: Any, _output: Any) -> None:
            self._spans[stage][1] = self._now(sync=True)

        self._handles.append(module.register_forward_pre_hook(before))
        self._handles.append(module.register_forward_hook(after))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._vae_decode is not None:
            del self.pipe.vae.decode  # the instance attribute: the class's method shows through again
            self._vae_decode = None

    def _flush(self) -> None:
        for stage in ("text_encode", "denoise", "vae_decode"):
            span = self._spans.get(stage)
            if span is not None and span[1] >= span[0]:
                self.observe(stage, span[1] - span[0])
        self._spans.clear()

    def _now(self, *, sync: bool = False) -> float:
        if sync and self.synchronize:
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_initialized():
                torch.cuda.synchronize()
        return self.clock()
