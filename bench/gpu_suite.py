"""``skuvid bench gpu``: every GPU figure the project needs, in one go (one lease of a lent GPU).

On a CUDA GPU, with the full Wan2.2 TI2V-5B architecture (random weights: the same compute as the real ones):

1. ``plain``: 480p and 720p, 121 frames, 50 steps + CFG and 4 steps without CFG (``bench.inference``).
2. ``options``: each speed option alone and all combined, through ``inference.pipeline.apply_speed_options``
   (what the worker runs): regional ``torch.compile``, attention backends (flash, sage), FP8 weights and
   activations (torchao), the First Block step cache. Each against the plain run of the same configuration
   and seed: seconds per video, speed-up, and the quality cost as PSNR / SSIM of the decoded frames
   (scikit-image). With random weights the frames are noise-like, so PSNR/SSIM measure numerical deviation
   from the plain run, not perceived quality: a lower bound on the damage an option does.
3. ``memory``: peak GPU memory of a 480p 4-step clip with the 5.7 B UMT5-XXL text encoder on the GPU and
   kept on the CPU (behind the embedding cache), and the same clip under a 24 GB and a 16 GB cap
   (``torch.cuda.set_per_process_memory_fraction``), plain and with VAE tiling.

Without a GPU it exercises the same code on the tiny model at 240p (shapes, options, PSNR/SSIM plumbing)
and says so: its seconds are no GPU figure. ``quick`` shrinks the matrix for a smoke run.
"""

from __future__ import annotations

import gc
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from bench.inference import TI2V_5B_TRANSFORMER, _decode, build_full_size, random_weight_pipeline
from inference.params import size_for
from inference.pipeline import RuntimeOptions, apply_speed_options
from skuvid.settings import TINY_MODEL, Settings

SEED = 0
OPTIONS: dict[str, dict[str, Any]] = {
    "compile": {"compile_transformer": True},
    "attention_flash": {"attention_backend": "flash"},
    "attention_sage": {"attention_backend": "sage"},
    "fp8": {"quantize": "fp8"},
    "first_block_cache": {"step_cache": "first_block", "step_cache_threshold": 0.1},
    "all": {"quantize": "fp8", "attention_backend": "sage", "step_cache": "first_block",
            "step_cache_threshold": 0.1, "compile_transformer": True},
}
CPU_OPTIONS = {"fp8_weight_only": {"quantize": "fp8_weight_only"},
               "first_block_cache": {"step_cache": "first_block", "step_cache_threshold": 0.1}}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


class Subject:
    """Builds a fresh pipeline (options are applied to a fresh transformer each time) and renders one clip."""

    def __init__(self, cuda: bool, settings: Settings) -> None:
        self.cuda = cuda
        self.settings = settings
        self.device = torch.device("cuda" if cuda else "cpu")

    def pipeline(self, options: RuntimeOptions) -> Any:
        if self.cuda:
            transformer, vae = build_full_size("cuda")
            pipe = random_weight_pipeline(transformer, vae)
        else:
            from inference.pipeline import VideoGenerator

            pipe = VideoGenerator.load(self.settings.model_copy(update={"model": TINY_MODEL, "device": "cpu"})).t2v
        apply_speed_options(pipe.transformer, options, self.device)
        return pipe

    def embeddings(self, pipe: Any) -> tuple[torch.Tensor, torch.Tensor]:
        dim = pipe.transformer.config.text_dim
        gen = torch.Generator("cpu").manual_seed(SEED)
        dtype = pipe.transformer.dtype if self.cuda else torch.float32
        pos, neg = (torch.randn(1, 512, dim, generator=gen).to(self.device, dtype) for _ in range(2))
        return pos, neg

    def render(self, pipe: Any, *, resolution: str, frames: int, steps: int, guidance: float) -> tuple[float, np.ndarray]:
        width, height = size_for(resolution, "16:9")
        pos, neg = self.embeddings(pipe)
        _sync()
        started = time.perf_counter()
        latents = pipe(prompt_embeds=pos, negative_prompt_embeds=neg if guidance > 1 else None, height=height,
                       width=width, num_frames=frames, num_inference_steps=steps, guidance_scale=guidance,
                       generator=torch.Generator("cpu").manual_seed(SEED), output_type="latent").frames
        video = _decode(pipe, latents)
        _sync()
        return time.perf_counter() - started, video


def quality(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """PSNR (dB) and mean SSIM of ``candidate`` frames against ``reference`` (uint8, same shape)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnr = peak_signal_noise_ratio(reference, candidate, data_range=255)
    step = max(1, len(reference) // 8)  # SSIM on 8 frames spread over the clip
    ssim = float(np.mean([structural_similarity(r, c, channel_axis=-1, data_range=255)
                          for r, c in zip(reference[::step], candidate[::step], strict=True)]))
    return {"psnr_db": round(float(min(psnr, 99.0)), 2), "ssim": round(ssim, 4)}


def _timed(subject: Subject, options: RuntimeOptions, config: dict[str, Any], warmups: int = 1) -> dict[str, Any]:
    """Build, warm up (compile, autotune) and time one configuration; failures are reported, not raised."""
    _free()
    try:
        pipe = subject.pipeline(options)
        for _ in range(warmups):
            subject.render(pipe, **{**config, "steps": min(2, config["steps"])})
        seconds, video = subject.render(pipe, **config)
    except Exception as exc:  # noqa: BLE001 - an option this GPU or build cannot run is a result too
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    peak = torch.cuda.max_memory_allocated() / 2**30 if subject.cuda else None
    del pipe
    return {"s_per_video": round(seconds, 3), "peak_mem_gib": round(peak, 2) if peak else None, "video": video}


def run_options(subject: Subject, configs: list[dict[str, Any]], options: dict[str, dict]) -> list[dict[str, Any]]:
    rows = []
    base = RuntimeOptions()
    for config in configs:
        plain = _timed(subject, base, config)
        rows.append({"option": "plain", **config, **{k: v for k, v in plain.items() if k != "video"}})
        for name, changes in options.items():
            result = _timed(subject, replace(base, **changes), config)
            row = {"option": name, **config, **{k: v for k, v in result.items() if k != "video"}}
            if "video" in result and "video" in plain:
                row["speedup"] = round(plain["s_per_video"] / result["s_per_video"], 3)
                row.update(quality(plain["video"], result["video"]))
            rows.append(row)
    return rows


def run_memory(subject: Subject, resolution: str, frames: int) -> list[dict[str, Any]]:
    """Peak memory with the text encoder on the GPU or the CPU, and under 24 / 16 GB caps."""
    if not subject.cuda:
        return [{"note": "memory figures need a CUDA GPU"}]
    from transformers import UMT5Config, UMT5EncoderModel

    config = {"resolution": resolution, "frames": frames, "steps": 4, "guidance": 1.0}
    rows = []
    total = torch.cuda.get_device_properties(0).total_memory
    for encoder_on in ("gpu", "cpu"):
        _free()
        encoder_config = UMT5Config(d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64,
                                    vocab_size=256384, feed_forward_proj="gated-gelu")
        with torch.device("cuda" if encoder_on == "gpu" else "cpu"):
            encoder = UMT5EncoderModel(encoder_config).to(torch.bfloat16)
        result = _timed(subject, RuntimeOptions(), config, warmups=0)
        rows.append({"case": f"text encoder on the {encoder_on}", **config,
                     **{k: v for k, v in result.items() if k != "video"}})
        del encoder
    for cap_gb in (24, 16):
        for tiling in (False, True):
            _free()
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gb * 2**30 / total))
            try:
                pipe = subject.pipeline(RuntimeOptions())
                if tiling:
                    pipe.vae.enable_tiling()
                    pipe.vae.enable_slicing()
                seconds, _ = subject.render(pipe, **config)
                rows.append({"case": f"{cap_gb} GB cap, vae tiling {tiling}", **config, "s_per_video": round(seconds, 3),
                             "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)})
            except torch.cuda.OutOfMemoryError as exc:
                rows.append({"case": f"{cap_gb} GB cap, vae tiling {tiling}", **config,
                             "error": f"OutOfMemoryError: {str(exc).splitlines()[0][:200]}"})
            finally:
                torch.cuda.set_per_process_memory_fraction(1.0)
                pipe = None
    return rows


def run(settings: Settings, *, quick: bool = False) -> dict[str, Any]:
    cuda = torch.cuda.is_available() and settings.device != "cpu"
    subject = Subject(cuda, settings)
    if cuda:
        frames = 121
        plain_configs = [{"resolution": r, "frames": frames, "steps": s, "guidance": g}
                         for r in ("480p", "720p") for s, g in ((50, 5.0), (4, 1.0))]
        option_configs = [{"resolution": "480p", "frames": frames, "steps": 50 if not quick else 8, "guidance": 5.0}]
        options = OPTIONS
    else:
        plain_configs = [{"resolution": "240p", "frames": 17, "steps": 4, "guidance": 1.0}]
        option_configs = [{"resolution": "240p", "frames": 17, "steps": 8, "guidance": 1.0}]
        options = CPU_OPTIONS
    if quick:
        plain_configs = plain_configs[-1:]
    device = torch.cuda.get_device_name() if cuda else "cpu (tiny model: no GPU figure)"
    plain = run_options(subject, plain_configs, {})
    return {
        "device": device, "torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
        "model": "Wan2.2-TI2V-5B architecture, random weights" if cuda else "tiny random-weight model",
        "transformer_layers": TI2V_5B_TRANSFORMER["num_layers"] if cuda else None,
        "plain": plain, "options": run_options(subject, option_configs, options),
        "memory": run_memory(subject, "480p", 121) if cuda else [{"note": "memory figures need a CUDA GPU"}],
    }

