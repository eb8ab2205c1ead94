"""FLOP accounting: the analytic transformer count equals torch's FLOP counter; published figures hold."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.inference import TI2V_5B_TRANSFORMER, TI2V_5B_VAE
from inference.flops import (
    TransformerDims,
    generation_flops,
    mfu,
    peak_bf16_tflops,
    transformer_forward_flops,
    vae_decode_flops,
    video_tokens,
)


def test_token_counts_of_the_official_sizes():
    assert video_tokens(height=480, width=832, num_frames=121) == 31 * 15 * 26 == 12_090
    assert video_tokens(height=704, width=1280, num_frames=121) == 27_280


def test_ti2v_5b_forward_flops_match_the_architecture_notes():
    dims = TransformerDims.from_config(TI2V_5B_TRANSFORMER)
    assert dims.hidden == 3072
    assert transformer_forward_flops(dims, tokens=12_090) / 1e12 == pytest.approx(162, rel=0.02)
    assert transformer_forward_flops(dims, tokens=27_280) / 1e12 == pytest.approx(517, rel=0.02)


@pytest.mark.parametrize(("height", "width", "frames"), [(64, 96, 9), (128, 64, 17)])
def test_analytic_count_equals_torch_flop_counter(height, width, frames):
    """Run a small TI2V transformer (4 layers, 3 heads x 16, ffn 80) on the meta device under FlopCounterMode."""
    from diffusers import WanTransformer3DModel

    config = TI2V_5B_TRANSFORMER | dict(num_attention_heads=3, attention_head_dim=16, ffn_dim=80, num_layers=4,
                                        text_dim=40, freq_dim=32)
    with torch.device("meta"):
        model = WanTransformer3DModel(**config)
    tokens = video_tokens(height=height, width=width, num_frames=frames)
    latents = torch.empty(1, 48, (frames - 1) // 4 + 1, height // 16, width // 16, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(hidden_states=latents, timestep=torch.zeros(1, tokens, device="meta"),
              encoder_hidden_states=torch.empty(1, 512, 40, device="meta"), return_dict=False)
    expected = transformer_forward_flops(TransformerDims.from_config(config), tokens=tokens)
    assert counter.get_total_flops() == pytest.approx(expected, rel=1e-9)


def test_vae_decode_flops_of_ti2v_5b_at_480p():
    assert vae_decode_flops(TI2V_5B_VAE, height=480, width=832, num_frames=121) / 1e15 == pytest.approx(0.89, rel=0.02)


def test_generation_flops_counts_cfg_forwards():
    with_cfg = generation_flops(TI2V_5B_TRANSFORMER, None, height=480, width=832, num_frames=121, steps=50,
                                guidance_scale=5.0)
    distilled = generation_flops(TI2V_5B_TRANSFORMER, None, height=480, width=832, num_frames=121, steps=4,
                                 guidance_scale=1.0)
    assert (with_cfg.forwards, distilled.forwards) == (100, 4)
    assert with_cfg.denoise / 1e15 == pytest.approx(16.3, rel=0.02)
    assert with_cfg.total == with_cfg.denoise and with_cfg.vae_decode is None


@pytest.mark.parametrize(
    ("name", "tflops"),
    [("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
     ("NVIDIA H200", 989.4), ("NVIDIA H20", 148.0), ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L40S", 362.0),
     ("NVIDIA L4", 121.0), ("NVIDIA A10G", 70.0), ("NVIDIA A10", 125.0), ("NVIDIA GeForce RTX 4090", 165.2),
     ("cpu", None), ("Some Future GPU", None)],
)
def test_peak_table_matches_device_names(name, tflops):
    assert peak_bf16_tflops(name) == tflops


def test_mfu():
    assert mfu(989.4e12, 2.0, 989.4) == pytest.approx(0.5)
    assert mfu(1e12, 1.0, None) is None
    assert mfu(1e12, 0.0, 989.4) is None
