"""The tiny random-weight TI2V pipeline: real classes, TI2V geometry, seeded, and a normal diffusers folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from inference.tiny_model import build_tiny_model, ensure_tiny_model


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_builds_are_bit_identical(tiny_dir, tmp_path):
    again = build_tiny_model(tmp_path / "again")
    assert files(again) == files(tiny_dir)
    assert {"model_index.json", "vae/diffusion_pytorch_model.safetensors",
            "transformer/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
            "tokenizer/tokenizer.json"} <= set(files(tiny_dir))


def test_another_seed_gives_other_weights(tiny_dir, tmp_path):
    other = build_tiny_model(tmp_path / "other", seed=1)
    a = load_file(tiny_dir / "transformer/diffusion_pytorch_model.safetensors")
    b = load_file(other / "transformer/diffusion_pytorch_model.safetensors")
    assert not torch.equal(a["proj_out.weight"], b["proj_out.weight"])


def test_reloads_bit_identically_with_from_pretrained(tiny_dir, tmp_path):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(tiny_dir)
    pipe.save_pretrained(tmp_path / "resaved")
    for part in ("transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors"):
        saved, resaved = load_file(tiny_dir / part), load_file(tmp_path / "resaved" / part)
        assert saved.keys() == resaved.keys()
        assert all(torch.equal(saved[k], resaved[k]) for k in saved), part


def test_has_the_ti2v_5b_geometry(tiny_dir):
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5EncoderModel

    pipe = WanPipeline.from_pretrained(tiny_dir)
    assert pipe.config.expand_timesteps is True
    assert isinstance(pipe.text_encoder, UMT5EncoderModel)
    assert isinstance(pipe.transformer, WanTransformer3DModel) and isinstance(pipe.vae, AutoencoderKLWan)
    vae, tr = pipe.vae.config, pipe.transformer.config
    assert (vae.z_dim, vae.is_residual, vae.patch_size, vae.scale_factor_temporal, vae.scale_factor_spatial) == (
        48, True, 2, 4, 16)
    assert (tr.in_channels, tr.out_channels, tuple(tr.patch_size), tr.num_layers) == (48, 48, (1, 2, 2), 2)
    assert tr.text_dim == pipe.text_encoder.config.d_model
    sched = pipe.scheduler
    assert isinstance(sched, UniPCMultistepScheduler)
    assert (sched.config.prediction_type, sched.config.use_flow_sigmas) == ("flow_prediction", True)


def test_vae_decodes_to_full_output_size(tiny_dir):
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(tiny_dir, subfolder="vae")
    with torch.no_grad():
        out = vae.decode(torch.randn(1, 48, 3, 2, 3)).sample
    assert out.shape == (1, 3, 9, 32, 48)  # 4x time (causal first frame), 16x space


def test_tokenizer_appends_eos_and_pads_like_t5(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir / "tokenizer")
    enc = tok(["a product video", "降噪蓝牙耳机"], padding="max_length", max_length=16, truncation=True,
              add_special_tokens=True, return_attention_mask=True)
    for ids, mask in zip(enc.input_ids, enc.attention_mask, strict=True):
        n = sum(mask)
        assert ids[n - 1] == tok.eos_token_id == 1
        assert ids[n:] == [tok.pad_token_id] * (16 - n) and tok.pad_token_id == 0
        assert tok.unk_token_id not in ids[: n - 1]


def test_image_to_video_pipeline_loads_from_the_same_folder(tiny_dir):
    from diffusers import WanImageToVideoPipeline

    pipe = WanImageToVideoPipeline.from_pretrained(tiny_dir)
    assert pipe.config.expand_timesteps is True
    assert pipe.image_encoder is None and pipe.transformer.config.image_dim is None


def test_ensure_builds_once_and_rebuilds_a_broken_folder(tmp_path):
    folder = ensure_tiny_model(tmp_path / "t")
    weights = folder / "transformer/diffusion_pytorch_model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert ensure_tiny_model(folder) == folder and weights.stat().st_mtime_ns == stamp
    (folder / "model_index.json").unlink()
    ensure_tiny_model(folder)
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "WanPipeline"
    assert not list(tmp_path.glob(".tiny-build-*"))  # no temporary folder left behind
