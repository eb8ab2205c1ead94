"""inference.stage_timing: render stages from progress reports, pipeline stages from module hooks."""

from __future__ import annotations

import pytest

from inference.stage_timing import PipelineStageHooks, StageProgress
from skuvid.metrics import GpuClock


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_progress_reports_become_stage_durations_and_gpu_time():
    clock = Clock()
    gpu = GpuClock(clock=clock)
    seen: list[tuple[str, float]] = []
    with StageProgress(lambda stage, s: seen.append((stage, s)), gpu_clock=gpu, clock=clock) as progress:
        progress("fetching image", None, None)
        clock.advance(0.5)
        progress("generating (attempt 1)", 0, 4)
        for step in range(1, 5):
            clock.advance(10)
            progress("generating (attempt 1)", step, 4)
        progress("quality gate", None, None)
        clock.advance(2)
        progress("generating (attempt 2)", 0, 4)  # the gate refused attempt 1
        clock.advance(40)
        progress("quality gate", None, None)
        clock.advance(2)
        progress("labelling and encoding", None, None)
        clock.advance(3)
    assert seen == [("image_fetch", 0.5), ("quality_gate", 2), ("quality_gate", 2), ("encode", 3)]
    assert progress.gpu_seconds == 80  # two generations of 40 s; the gate runs on the CPU pool
    assert gpu.busy_seconds() == 80


def test_progress_closes_the_open_stage_when_the_render_raises():
    clock = Clock()
    seen = []
    with pytest.raises(RuntimeError), StageProgress(lambda *a: seen.append(a), clock=clock) as progress:
        progress("fetching image", None, None)
        clock.advance(1.5)
        raise RuntimeError("image host down")
    assert seen == [("image_fetch", 1.5)]


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def tiny_pipe(torch, clock: Clock):
    """A diffusers-shaped pipeline: text encoder, transformer (CFG: two calls a step), VAE with ``decode``."""
    nn = torch.nn

    class Slow(nn.Module):
        """A module whose forward takes ``seconds`` of the test clock."""

        def __init__(self, seconds: float) -> None:
            super().__init__()
            self.seconds = seconds

        def forward(self, x):
            clock.advance(self.seconds)
            return x

    class VAE(nn.Module):
        def decode(self, latents, return_dict=False):
            clock.advance(3)
            return (latents,)

    class Pipe:
        def __init__(self) -> None:
            self.text_encoder = Slow(0.5)
            self.transformer = Slow(0.5)
            self.transformer_2 = None
            self.vae = VAE()

        def __call__(self, steps: int = 3, fail_in_denoise: bool = False):
            x = torch.zeros(1, 4)
            self.text_encoder(x)  # prompt
            self.text_encoder(x)  # negative prompt
            clock.advance(0.2)  # latents prepared: between the spans
            for step in range(steps):
                self.transformer(x)  # conditional
                self.transformer(x)  # unconditional (CFG)
                if fail_in_denoise and step == 1:
                    raise RuntimeError("CUDA out of memory")
                clock.advance(0.1)  # scheduler step: inside the denoise span except after the last step
            return self.vae.decode(x, return_dict=False)[0]

    return Pipe()


def test_pipeline_hooks_time_text_encode_denoise_and_vae_decode(torch):
    clock = Clock()
    pipe = tiny_pipe(torch, clock)
    seen: list[tuple[str, float]] = []
    hooks = PipelineStageHooks.attach(pipe, lambda stage, s: seen.append((stage, round(s, 6))), clock=clock)
    pipe(steps=3)
    assert seen == [("text_encode", 1.0), ("denoise", 3.2), ("vae_decode", 3.0)]
    seen.clear()
    with pytest.raises(RuntimeError):
        pipe(steps=3, fail_in_denoise=True)
    assert seen == []  # an interrupted call observes nothing ...
    pipe(steps=1)
    assert seen == [("text_encode", 1.0), ("denoise", 1.0), ("vae_decode", 3.0)]  # ... nor leaks into the next
    hooks.detach()
    seen.clear()
    pipe(steps=1)
    assert seen == [] and "decode" not in vars(pipe.vae)
