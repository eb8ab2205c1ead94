"""The inference benchmark: full-size architecture (counted on meta) and a CPU run on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.inference import build_full_size, random_weight_pipeline, run
from inference.tiny_model import build_tiny_model
from skuvid.settings import Settings


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny-model ops are microseconds: on the shared 2-core CPU thread hand-offs cost more than the math."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_full_size_architecture_has_5b_transformer_and_0_7b_vae_without_allocating():
    transformer, vae = build_full_size("meta")
    assert sum(p.numel() for p in transformer.parameters()) / 1e9 == pytest.approx(4.9998, abs=5e-4)
    assert sum(p.numel() for p in vae.parameters()) / 1e9 == pytest.approx(0.70, abs=0.01)
    assert all(p.device.type == "meta" for p in transformer.parameters())
    dtypes = {name: p.dtype for name, p in transformer.named_parameters()}
    assert dtypes["blocks.0.attn1.to_q.weight"] == torch.bfloat16
    assert dtypes["blocks.0.scale_shift_table"] == torch.float32  # kept in fp32, as from_pretrained does
    assert dtypes["condition_embedder.time_embedder.linear_1.weight"] == torch.float32


def test_random_weight_pipeline_runs_from_embeddings_alone(tmp_path):
    """The full-size path in miniature: tiny models, no tokenizer or text encoder, random embeddings."""
    from diffusers import WanPipeline

    tiny = WanPipeline.from_pretrained(build_tiny_model(tmp_path / "tiny"))
    pipe = random_weight_pipeline(tiny.transformer, tiny.vae)
    embeds = torch.randn(1, 512, tiny.transformer.config.text_dim)
    out = pipe(prompt_embeds=embeds, negative_prompt_embeds=embeds, height=64, width=64, num_frames=5,
               num_inference_steps=2, guidance_scale=5.0, output_type="np").frames
    assert out.shape == (1, 5, 64, 64, 3)


def test_cpu_run_reports_every_stage(tmp_path):
    encoded = []
    report = run(Settings(tiny_model_dir=tmp_path / "tiny"), full_size=False, frames=121,
                 configs=((3, 5.0), (2, 1.0)), encode=lambda frames: encoded.append(frames.shape), cpu_frames=5)
    assert report["model"] == "tiny" and report["device"].startswith("cpu")
    assert len(report["runs"]) == 2 and len(encoded) == 2
    for r, (steps, cfg) in zip(report["runs"], ((3, True), (2, False)), strict=True):
        assert (r["width"], r["height"], r["frames"], r["steps"], r["cfg"]) == (416, 224, 5, steps, cfg)
        assert r["frames_shape"] == [5, 224, 416, 3]
        assert r["forwards"] == steps * (2 if cfg else 1)
        for key in ("text_encode_s", "s_per_step", "denoise_s", "vae_decode_s", "encode_s", "s_per_video"):
            assert r[key] > 0, key
        assert r["s_per_video"] >= r["denoise_s"] + r["vae_decode_s"]
        assert r["peak_mem_gb"] is None and r["mfu"] is None  # no GPU, no peak to compare with
        assert np.isfinite(r["tflop_per_forward"]) and r["tokens"] == 2 * 7 * 13


def test_full_size_refuses_to_run_on_a_cpu(tmp_path):
    with pytest.raises(ValueError, match="full_size needs a CUDA GPU"):
        run(Settings(tiny_model_dir=tmp_path / "tiny", device="cpu"), full_size=True)
