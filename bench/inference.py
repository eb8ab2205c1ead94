"""Inference benchmark: seconds per denoising step, per VAE decode and per video, peak GPU memory and MFU.

Stages are timed separately: text encoding (``encode_prompt``), denoising (the pipeline called with
``output_type="latent"``; every step is timestamped by ``callback_on_step_end``), VAE decode (``vae.decode``
+ post-processing to uint8), and optionally the caller's encode/upload callable. On a GPU every timestamp is
taken after ``torch.cuda.synchronize()``.

Subjects:
- CPU: the tiny random-weight model at 240p and few frames (a smoke run of the real code path; its numbers
  say nothing about GPU speed).
- GPU: the model named by the settings, loaded like the worker loads it.
- GPU ``full_size``: the real TI2V-5B architecture (5.0 B transformer, 0.70 B VAE) with random weights built
  directly on the GPU (same compute as the real weights), and random 512x4096 text embeddings instead of
  UMT5-XXL, whose encoding is therefore not timed.

``python -m bench.inference [--full-size] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from inference.flops import generation_flops, mfu, peak_bf16_tflops
from inference.params import size_for
from skuvid.settings import TINY_MODEL, Settings, get_settings

PROMPT = "A matte black wireless headphone rotating slowly on a white studio table, soft light, 4k"
NEGATIVE = "blurry, low quality, distorted, watermark, text"
CPU_RESOLUTION = "240p"
TEXT_TOKENS, TEXT_DIM = 512, 4096

#: WanTransformer3DModel config of Wan2.2 TI2V-5B (4.9998 B parameters).
TI2V_5B_TRANSFORMER: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=24, attention_head_dim=128, in_channels=48, out_channels=48,
    text_dim=4096, freq_dim=256, ffn_dim=14336, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)
#: AutoencoderKLWan config of Wan2.2 TI2V-5B (0.70 B parameters; 4x16x16 compression to 48 channels).
TI2V_5B_VAE: dict[str, Any] = dict(
    base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
    temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12, patch_size=2,
    scale_factor_spatial=16, scale_factor_temporal=4, latents_mean=[0.0] * 48, latents_std=[1.0] * 48,
)


@dataclass
class Subject:
    """What is benchmarked: a pipeline, how to get text embeddings, and what to call it in the report."""

    pipe: Any
    label: str
    encode_text: Callable[[bool], tuple[torch.Tensor, torch.Tensor | None]]
    text_timed: bool
    notes: list[str] = field(default_factory=list)


def build_full_size(device: str | torch.device, *, dtype: torch.dtype = torch.bfloat16) -> tuple[Any, Any]:
    """The TI2V-5B transformer (``dtype``, its fp32-kept modules in fp32) and VAE (fp32), random weights,
    constructed directly on ``device`` (on "meta" nothing is allocated: use it to count parameters)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    with torch.device(device):
        transformer = WanTransformer3DModel(**TI2V_5B_TRANSFORMER)
        vae = AutoencoderKLWan(**TI2V_5B_VAE)
    keep = set(getattr(transformer, "_keep_in_fp32_modules", None) or ())
    for name, param in transformer.named_parameters():
        param.data = param.data.to(torch.float32 if keep & set(name.split(".")) else dtype)
    return transformer.eval().requires_grad_(False), vae.eval().requires_grad_(False)


def random_weight_pipeline(transformer: Any, vae: Any, *, flow_shift: float = 5.0) -> Any:
    """A TI2V ``WanPipeline`` around given models, without tokenizer or text encoder (embeddings are given)."""
    from diffusers import UniPCMultistepScheduler, WanPipeline

    from inference.pipeline import flow_scheduler

    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                       scheduler=flow_scheduler(UniPCMultistepScheduler().config, flow_shift), expand_timesteps=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _random_text(device: torch.device, dtype: torch.dtype, dim: int) -> Callable[[bool], tuple]:
    gen = torch.Generator("cpu").manual_seed(0)
    pos = torch.randn(1, TEXT_TOKENS, dim, generator=gen).to(device, dtype)
    neg = torch.randn(1, TEXT_TOKENS, dim, generator=gen).to(device, dtype)
    return lambda cfg: (pos, neg if cfg else None)


def _subject(settings: Settings, *, full_size: bool, cuda: bool) -> Subject:
    if full_size:
        if not cuda:
            raise ValueError("full_size needs a CUDA GPU: the 5 B model takes hours per clip on a CPU")
        transformer, vae = build_full_size("cuda")
        return Subject(
            random_weight_pipeline(transformer, vae, flow_shift=settings.flow_shift),
            "Wan2.2-TI2V-5B architecture, random weights",
            _random_text(torch.device("cuda"), transformer.dtype, TEXT_DIM), text_timed=False,
            notes=["random weights built on the GPU; text encoding (UMT5-XXL) not timed: random 512x4096 embeddings"],
        )
    from inference.pipeline import VideoGenerator

    gen = VideoGenerator.load(settings)
    pipe = gen.t2v

    def encode(cfg: bool) -> tuple:
        return pipe.encode_prompt(PROMPT, NEGATIVE, cfg, max_sequence_length=TEXT_TOKENS, device=gen.device)

    notes = [] if cuda else ["CPU: tiny random-weight model at 240p; a smoke run, not a speed figure"]
    return Subject(pipe, gen.model_id, encode, text_timed=True, notes=notes)


def _sync(cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter()


def _decode(pipe: Any, latents: torch.Tensor) -> np.ndarray:
    """Latents -> uint8 frames, exactly the pipeline's own decode tail."""
    vae = pipe.vae
    latents = latents.to(vae.device, vae.dtype)
    mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
    with torch.no_grad():
        video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
    frames = pipe.video_processor.postprocess_video(video, output_type="np")[0]
    frames = np.nan_to_num(frames, nan=0.0)  # random full-size weights may overflow bf16; timing is unaffected
    return np.rint(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)


def _measure_once(subject: Subject, *, height: int, width: int, frames: int, steps: int, guidance: float,
                  cuda: bool, encode: Callable[[np.ndarray], Any] | None) -> dict[str, Any]:
    pipe, cfg = subject.pipe, guidance > 1.0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = _sync(cuda)
    with torch.no_grad():
        prompt_embeds, negative_embeds = subject.encode_text(cfg)
    t1 = _sync(cuda)
    stamps: list[float] = []

    def on_step(_pipe: Any, _i: int, _t: Any, kwargs: dict) -> dict:
        stamps.append(_sync(cuda))
        return kwargs

    latents = pipe(
        prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds if cfg else None, height=height,
        width=width, num_frames=frames, num_inference_steps=steps, guidance_scale=guidance,
        generator=torch.Generator("cpu").manual_seed(0), output_type="latent", callback_on_step_end=on_step,
    ).frames
    t2 = _sync(cuda)
    video = _decode(pipe, latents)
    t3 = _sync(cuda)
    if encode is not None:
        encode(video)
    t4 = _sync(cuda)
    steps_s = np.diff([t1, *stamps]).tolist()
    return {
        "text_encode_s": (t1 - t0) if subject.text_timed else None,
        "first_step_s": steps_s[0],
        "s_per_step": statistics.mean(steps_s[1:] or steps_s),
        "denoise_s": t2 - t1,
        "vae_decode_s": t3 - t2,
        "encode_s": (t4 - t3) if encode is not None else None,
        "s_per_video": t4 - t0,
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
        "frames_shape": list(video.shape),
    }


def _median_run(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The sample with the median total time (stages from one real run, not mixed across runs)."""
    ordered = sorted(samples, key=lambda s: s["s_per_video"])
    return ordered[(len(ordered) - 1) // 2]


def _with_flops(run: dict[str, Any], pipe: Any, peak: float | None, *, steps: int, guidance: float) -> dict:
    fl = generation_flops(pipe.transformer.config, pipe.vae.config, height=run["height"], width=run["width"],
                          num_frames=run["frames"], steps=steps, guidance_scale=guidance)
    run.update(
        tokens=fl.tokens, forwards=fl.forwards, tflop_per_forward=fl.forward / 1e12,
        pflop_denoise=fl.denoise / 1e15, pflop_vae_decode=(fl.vae_decode or 0.0) / 1e15,
        mfu=mfu(fl.total, run["denoise_s"] + run["vae_decode_s"], peak),
        mfu_denoise=mfu(fl.denoise, run["denoise_s"], peak),
        mfu_vae_decode=mfu(fl.vae_decode or 0.0, run["vae_decode_s"], peak),
    )
    return run


def run(
    settings: Settings,
    *,
    full_size: bool,
    resolutions: Sequence[str] = ("480p",),
    frames: int = 121,
    configs: Sequence[tuple[int, float]] = ((50, 5.0), (4, 1.0)),
    repeats: int = 1,
    aspect: str = "16:9",
    encode: Callable[[np.ndarray], Any] | None = None,
    cpu_frames: int = 17,
) -> dict[str, Any]:
    """Benchmark every (resolution, (steps, guidance)) pair; one warm-up call per resolution, then
    ``repeats`` timed runs, reporting the median one. Without a GPU: the tiny model, 240p,
    ``min(frames, cpu_frames)`` frames. Returns a JSON-ready dict with one entry per configuration in
    ``runs``."""
    cuda = torch.cuda.is_available() and settings.device != "cpu"
    if not cuda:
        settings = settings.model_copy(update={"model": TINY_MODEL, "device": "cpu"})
        resolutions, frames = (CPU_RESOLUTION,), min(frames, cpu_frames)
    if frames % 4 != 1:
        raise ValueError(f"frames must be 4n+1, got {frames}")
    subject = _subject(settings, full_size=full_size, cuda=cuda)
    threads = torch.get_num_threads()
    device_name = torch.cuda.get_device_name() if cuda else f"cpu ({platform.machine()}, {threads} threads)"
    peak = peak_bf16_tflops(device_name) if cuda else None
    runs = []
    for resolution in resolutions:
        width, height = size_for(resolution, aspect)
        _measure_once(subject, height=height, width=width, frames=frames, steps=2, guidance=configs[0][1],
                      cuda=cuda, encode=None)  # warm-up: kernels, allocator, autotuning
        for steps, guidance in configs:
            samples = [
                _measure_once(subject, height=height, width=width, frames=frames, steps=steps, guidance=guidance,
                              cuda=cuda, encode=encode)
                for _ in range(max(1, repeats))
            ]
            result = {"resolution": resolution, "aspect": aspect, "height": height, "width": width,
                      "frames": frames, "steps": steps, "guidance_scale": guidance, "cfg": guidance > 1.0,
                      **_median_run(samples)}
            runs.append(_with_flops(result, subject.pipe, peak, steps=steps, guidance=guidance))
    return {
        "device": device_name,
        "model": subject.label,
        "full_size": full_size,
        "torch": torch.__version__,
        "diffusers": __import__("diffusers").__version__,
        "peak_bf16_tflops": peak,
        "mfu_basis": "model FLOPs / dense bf16 spec peak (H100 SXM 989 TFLOP/s)",
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "notes": subject.notes,
        "runs": runs,
    }


def _print_table(report: dict[str, Any]) -> None:
    print(f"{report['model']} on {report['device']}")
    for note in report["notes"]:
        print(f"  note: {note}")
    for r in report["runs"]:
        mfu_txt = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        mem = "n/a" if r["peak_mem_gb"] is None else f"{r['peak_mem_gb']:.1f} GB"
        print(f"  {r['width']}x{r['height']}x{r['frames']} steps={r['steps']} cfg={r['cfg']}: "
              f"{r['s_per_step']:.3f} s/step, decode {r['vae_decode_s']:.2f} s, {r['s_per_video']:.2f} s/video, "
              f"peak {mem}, MFU {mfu_txt}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inference", description=__doc__.splitlines()[0])
    parser.add_argument("--full-size", action="store_true", help="random-weight 5B architecture (GPU only)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--resolutions", default="480p", help="comma separated: 240p,480p,720p")
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--cpu-frames", type=int, default=17)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    report = run(get_settings(), full_size=args.full_size, resolutions=tuple(args.resolutions.split(",")),
                 frames=args.frames, repeats=args.repeats, cpu_frames=args.cpu_frames)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_table(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
