"""FLOP accounting for Wan2.2 TI2V generation, for MFU figures and capacity planning.

Transformer FLOPs are analytic (matmuls only, 2 FLOPs per multiply-add; norms, RoPE and element-wise ops
are memory-bound and left out), derived from the model config and the latent geometry:

    tokens N = ((F - 1) / t_vae + 1) / p_t  x  H / s_vae / p_h  x  W / s_vae / p_w
    per layer: self-attn projections 8 N d^2 + attention 4 N^2 d
               cross-attn 4 N d^2 (q, o) + 4 T d^2 (k, v over T = 512 text tokens) + 4 N T d
               FFN 4 N d f
    once:      patch embedding, per-token timestep embedding (TI2V: one timestep per token), text
               projection, output projection

For TI2V-5B that is 163.4 TFLOP per forward at 832x480x121 (N = 12,090) and 520.7 at 1280x704x121
(N = 27,280; attention is 53 % of it), equal to what ``torch.utils.flop_counter`` counts on the real module.
VAE decode FLOPs have no neat closed form (causal 3-D convs over a pyramid, chunked per latent frame), so
they are counted by running the real decoder on the meta device under ``FlopCounterMode``: no memory, no
compute, exact for the installed diffusers code (0.89 PFLOP at 480p, 2.01 PFLOP at 720p).

MFU here = model FLOPs / (seconds x dense bf16 *spec* peak), the usual convention (H100 SXM: 989 TFLOP/s).
A well-fed H100 reaches about 800 TFLOP/s in bf16 matmuls, so MFU against that measured ceiling would be
1.24x the figure reported.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

TEXT_TOKENS = 512  # UMT5 sequence length the pipeline pads every prompt to


@dataclass(frozen=True)
class TransformerDims:
    """The numbers of a ``WanTransformer3DModel`` config that set its compute."""

    hidden: int
    layers: int
    ffn: int
    in_channels: int
    out_channels: int
    patch: tuple[int, int, int]
    text_dim: int
    freq_dim: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TransformerDims:
        return cls(
            hidden=int(config["num_attention_heads"]) * int(config["attention_head_dim"]),
            layers=int(config["num_layers"]),
            ffn=int(config["ffn_dim"]),
            in_channels=int(config["in_channels"]),
            out_channels=int(config.get("out_channels") or config["in_channels"]),
            patch=tuple(int(p) for p in config["patch_size"]),  # type: ignore[arg-type]
            text_dim=int(config["text_dim"]),
            freq_dim=int(config["freq_dim"]),
        )


def video_tokens(
    *, height: int, width: int, num_frames: int, patch: tuple[int, int, int] = (1, 2, 2),
    vae_scale_spatial: int = 16, vae_scale_temporal: int = 4,
) -> int:
    """Transformer sequence length for a clip (480x832x121 -> 31 x 15 x 26 = 12,090 for TI2V-5B)."""
    latent_frames = (num_frames - 1) // vae_scale_temporal + 1
    return (
        (latent_frames // patch[0])
        * (height // vae_scale_spatial // patch[1])
        * (width // vae_scale_spatial // patch[2])
    )


def transformer_forward_flops(dims: TransformerDims, *, tokens: int, text_tokens: int = TEXT_TOKENS) -> float:
    """Matmul FLOPs of one transformer forward (one CFG branch, batch 1) over ``tokens`` video tokens."""
    n, t, d, f = tokens, text_tokens, dims.hidden, dims.ffn
    patch_volume = dims.patch[0] * dims.patch[1] * dims.patch[2]
    per_layer = (
        8 * n * d * d  # self-attention q, k, v, o
        + 4 * n * n * d  # self-attention scores and weighted values
        + 4 * n * d * d + 4 * t * d * d  # cross-attention q, o (video) and k, v (text)
        + 4 * n * t * d  # cross-attention scores and values
        + 4 * n * d * f  # feed-forward up and down
    )
    once = (
        2 * n * dims.in_channels * patch_volume * d  # patch embedding
        + 2 * n * (dims.freq_dim * d + d * d) + 2 * n * d * 6 * d  # per-token timestep embedding + modulation
        + 2 * t * (dims.text_dim * d + d * d)  # text projection
        + 2 * n * d * dims.out_channels * patch_volume  # output projection
    )
    return float(dims.layers * per_layer + once)


def vae_decode_flops(vae_config: Mapping[str, Any], *, height: int, width: int, num_frames: int) -> float:
    """FLOPs of one ``AutoencoderKLWan.decode`` of a (height x width x num_frames) clip, counted on meta."""
    clean = {k: v for k, v in vae_config.items() if not k.startswith("_")}
    return _vae_decode_flops(json.dumps(clean, sort_keys=True, default=list), height, width, num_frames)


@lru_cache(maxsize=32)
def _vae_decode_flops(config_json: str, height: int, width: int, num_frames: int) -> float:
    import torch
    from diffusers import AutoencoderKLWan
    from torch.utils.flop_counter import FlopCounterMode

    config = json.loads(config_json)
    with torch.device("meta"):
        vae = AutoencoderKLWan.from_config(config)
    s, t = vae.config.scale_factor_spatial, vae.config.scale_factor_temporal
    latents = torch.empty(1, vae.config.z_dim, (num_frames - 1) // t + 1, height // s, width // s, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        vae.decode(latents)
    return float(counter.get_total_flops())


@dataclass(frozen=True)
class GenerationFlops:
    """FLOPs of one video: ``forwards`` transformer passes (steps x 2 with CFG) plus one VAE decode."""

    tokens: int
    forward: float
    forwards: int
    denoise: float
    vae_decode: float | None

    @property
    def total(self) -> float:
        return self.denoise + (self.vae_decode or 0.0)


def generation_flops(
    transformer_config: Mapping[str, Any], vae_config: Mapping[str, Any] | None, *,
    height: int, width: int, num_frames: int, steps: int, guidance_scale: float,
) -> GenerationFlops:
    """Model FLOPs of a whole generation; ``vae_config`` None leaves the decode out."""
    dims = TransformerDims.from_config(transformer_config)
    s = int(vae_config["scale_factor_spatial"]) if vae_config else 16
    t = int(vae_config["scale_factor_temporal"]) if vae_config else 4
    tokens = video_tokens(height=height, width=width, num_frames=num_frames, patch=dims.patch,
                          vae_scale_spatial=s, vae_scale_temporal=t)
    forward = transformer_forward_flops(dims, tokens=tokens)
    forwards = steps * (2 if guidance_scale > 1.0 else 1)
    decode = vae_decode_flops(vae_config, height=height, width=width, num_frames=num_frames) if vae_config else None
    return GenerationFlops(tokens=tokens, forward=forward, forwards=forwards, denoise=forward * forwards,
                           vae_decode=decode)


#: Dense (no sparsity) bf16 tensor-core peaks from the vendor data sheets, TFLOP/s; most specific name first.
_PEAK_BF16_TFLOPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("h100", "pcie"), 756.0),
    (("h100", "nvl"), 835.0),
    (("h100",), 989.4),  # SXM5 ("NVIDIA H100 80GB HBM3")
    (("gh200",), 989.4),
    (("h200",), 989.4),
    (("h20",), 148.0),
    (("b200",), 2250.0),
    (("a100",), 312.0),
    (("l40s",), 362.0),
    (("l4",), 121.0),
    (("a10g",), 70.0),
    (("a10",), 125.0),
    (("rtx 4090",), 165.2),
    (("rtx 3090",), 71.0),
)


def peak_bf16_tflops(device_name: str) -> float | None:
    """Dense bf16 spec peak of a GPU named like ``torch.cuda.get_device_name()``; None when unknown or a CPU."""
    name = device_name.lower()
    for words, tflops in _PEAK_BF16_TFLOPS:
        if all(_has_word(name, w) for w in words):
            return tflops
    return None


def _has_word(name: str, word: str) -> bool:
    """``word`` in ``name`` not followed by an alphanumeric (so 'l4' does not match 'l40s', 'h20' not 'h200')."""
    start = name.find(word)
    while start != -1:
        end = start + len(word)
        if end == len(name) or not name[end].isalnum():
            return True
        start = name.find(word, start + 1)
    return False


def mfu(flops: float, seconds: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1]: achieved FLOP/s over the peak; None without a known peak."""
    if not peak_tflops or seconds <= 0:
        return None
    return flops / seconds / (peak_tflops * 1e12)
