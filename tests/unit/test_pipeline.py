"""The diffusers runtime on the tiny random-weight model: shapes, determinism, image conditioning, CFG,
the text-embedding cache, and the failure contract (NaN output, CUDA OOM retry)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inference.pipeline import (
    GenerationError,
    VideoGenerator,
    resolve_device,
    transformer_dtype_for,
)
from schemas.events import Reason, RenderParams
from skuvid.settings import Settings

PARAMS = RenderParams(width=64, height=64, num_frames=9, steps=3, guidance_scale=5.0, flow_shift=5.0, seed=11)
PROMPT, NEGATIVE = "a red ceramic mug on a white table", "blurry, low quality"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def settings_for(tiny_dir: Path, **overrides) -> Settings:
    return Settings(model="tiny", tiny_model_dir=tiny_dir, device="cpu", **overrides)


@pytest.fixture(scope="session")
def gen(tiny_dir) -> VideoGenerator:
    return VideoGenerator.load(settings_for(tiny_dir))


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    """A product-like photo: a red object on white, wider than the frame (so it is fitted first)."""
    img = Image.new("RGB", (120, 80), (255, 255, 255))
    img.paste((200, 30, 30), (40, 20, 80, 60))
    return img


def render(gen: VideoGenerator, *, image=None, prompt=PROMPT, **changes) -> np.ndarray:
    return gen.generate(prompt=prompt, negative_prompt=NEGATIVE, params=PARAMS.model_copy(update=changes),
                        image=image)


def count_forwards(gen: VideoGenerator) -> tuple[list[int], object]:
    calls: list[int] = []
    handle = gen.t2v.transformer.register_forward_hook(lambda mod, args, kwargs, out: calls.append(1),
                                                        with_kwargs=True)
    return calls, handle


# --- loading -------------------------------------------------------------------------------------------------


def test_load_shares_one_set_of_components_between_t2v_and_i2v(gen):
    assert gen.model_id == "tiny" and gen.device == torch.device("cpu")
    assert gen.i2v is not None and gen.i2v.config.expand_timesteps and gen.t2v.config.expand_timesteps
    for name in ("transformer", "vae", "text_encoder", "tokenizer"):
        assert getattr(gen.i2v, name) is getattr(gen.t2v, name)
    assert gen.t2v.vae.dtype == torch.float32 and gen.t2v.transformer.dtype == torch.float32


def test_load_from_a_local_folder_uses_the_same_path(tiny_dir):
    folder_gen = VideoGenerator.load(Settings(model=str(tiny_dir), device="cpu"))
    assert folder_gen.model_id == str(tiny_dir)
    assert folder_gen.t2v.transformer.config.in_channels == 48


def test_device_and_dtype_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert transformer_dtype_for(torch.device("cuda")) == torch.bfloat16
    assert transformer_dtype_for(torch.device("cpu")) == torch.float32


def test_scheduler_is_unipc_flow_with_the_request_flow_shift(gen):
    render(gen, flow_shift=3.0)
    sched = gen.t2v.scheduler
    assert type(sched).__name__ == "UniPCMultistepScheduler"
    assert (sched.config.prediction_type, sched.config.use_flow_sigmas, sched.config.flow_shift) == (
        "flow_prediction", True, 3.0)


# --- text to video -------------------------------------------------------------------------------------------


def test_text_to_video_shape_dtype_and_full_size(gen):
    frames = render(gen, width=96, height=64, num_frames=13)
    assert frames.shape == (13, 64, 96, 3) and frames.dtype == np.uint8
    assert frames.std() > 5  # not a flat or empty clip


def test_same_seed_same_frames_other_seed_other_frames(gen):
    a, b, c = render(gen), render(gen), render(gen, seed=12)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_prompt_and_flow_shift_change_the_frames(gen):
    base = render(gen)
    assert not np.array_equal(base, render(gen, prompt="stainless steel kitchen knife set"))
    assert not np.array_equal(base, render(gen, flow_shift=2.0))


def test_guidance_at_most_one_disables_cfg(gen):
    calls, handle = count_forwards(gen)
    try:
        render(gen, guidance_scale=5.0)
        with_cfg = len(calls)
        calls.clear()
        render(gen, guidance_scale=1.0)
        without = len(calls)
    finally:
        handle.remove()
    assert (with_cfg, without) == (2 * PARAMS.steps, PARAMS.steps)


# --- image to video ------------------------------------------------------------------------------------------


def test_image_to_video_shape_and_determinism(gen, photo):
    a, b = render(gen, image=photo), render(gen, image=photo)
    assert a.shape == (9, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)


def test_the_photo_pins_the_first_frame(gen, photo):
    """TI2V keeps the photo's latent as the first latent frame: frame 0 no longer depends on seed or prompt
    (it does in text-to-video), the later frames still do."""
    i2v_a = render(gen, image=photo)
    i2v_b = render(gen, image=photo, seed=12, prompt="stainless steel kitchen knife set")
    assert np.array_equal(i2v_a[0], i2v_b[0])
    assert not np.array_equal(i2v_a[1:], i2v_b[1:])
    t2v_a, t2v_b = render(gen), render(gen, seed=12)
    assert not np.array_equal(t2v_a[0], t2v_b[0])


def test_image_conditioning_changes_the_video(gen, photo):
    t2v, i2v = render(gen), render(gen, image=photo)
    other_photo = render(gen, image=Image.new("RGB", (64, 64), (20, 60, 220)))
    assert not np.array_equal(t2v, i2v)
    assert np.abs(i2v[0].astype(int) - other_photo[0].astype(int)).mean() > 1.0


# --- text embeddings -----------------------------------------------------------------------------------------


def test_text_embeddings_are_encoded_once_per_text(tiny_dir):
    fresh = VideoGenerator.load(settings_for(tiny_dir))
    encodes: list[int] = []
    handle = fresh.t2v.text_encoder.register_forward_hook(lambda *_: encodes.append(1))
    try:
        first = render(fresh, seed=1)
        render(fresh, seed=2)  # a quality retry: same prompt, new seed
        render(fresh, prompt="a blue teapot", seed=3)  # same negative prompt
    finally:
        handle.remove()
    assert len(encodes) == 3  # PROMPT, NEGATIVE, "a blue teapot": each once
    assert (fresh.embeddings.hits, fresh.embeddings.misses) == (3, 3)
    assert np.array_equal(first, render(fresh, seed=1))  # cached embeddings give the same frames


def test_embedding_cache_is_bounded(tiny_dir):
    small = VideoGenerator.load(settings_for(tiny_dir, text_cache_entries=2, guidance_scale=1.0))
    for text in ("a", "b", "c"):
        small.embeddings.get(text)
    assert len(small.embeddings) == 2


def test_text_encoder_can_stay_on_the_cpu(tiny_dir):
    cpu_encoder = VideoGenerator.load(settings_for(tiny_dir, text_encoder_device="cpu"))
    assert cpu_encoder.t2v.text_encoder.device.type == "cpu"
    assert render(cpu_encoder).shape == (PARAMS.num_frames, PARAMS.height, PARAMS.width, 3)


# --- failure contract ----------------------------------------------------------------------------------------


def test_frame_count_the_vae_cannot_make_is_invalid_params(gen):
    with pytest.raises(GenerationError) as info:
        render(gen, num_frames=10)
    assert info.value.reason is Reason.INVALID_PARAMS
    assert info.value.message == "num_frames must be 4n+1, got 10"


def test_nan_output_is_invalid_output(tiny_dir):
    poisoned = VideoGenerator.load(settings_for(tiny_dir))
    with torch.no_grad():
        poisoned.t2v.transformer.proj_out.weight[0, 0] = float("nan")
    with pytest.raises(GenerationError) as info:
        render(poisoned)
    assert info.value.reason is Reason.INVALID_OUTPUT
    assert "are NaN or infinite" in info.value.message


class OomDouble:
    """Test double for a pipeline on a GPU that runs out of memory: its first ``failures`` calls raise
    ``torch.cuda.OutOfMemoryError`` (no GPU here to really exhaust); later calls run the real tiny pipeline."""

    def __init__(self, real, failures: int) -> None:
        object.__setattr__(self, "real", real)
        object.__setattr__(self, "failures", failures)
        object.__setattr__(self, "calls", 0)

    def __call__(self, **kwargs):
        object.__setattr__(self, "calls", self.calls + 1)
        if self.calls <= self.failures:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.real(**kwargs)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __setattr__(self, name, value) -> None:
        setattr(self.real, name, value)


def test_oom_is_retried_once_in_low_memory_mode(tiny_dir):
    fresh = VideoGenerator.load(settings_for(tiny_dir))
    expected = render(fresh)
    fresh.t2v = OomDouble(fresh.t2v, failures=1)
    assert not fresh.low_memory and not fresh.t2v.vae.use_tiling
    frames = render(fresh)
    assert fresh.t2v.calls == 2
    assert fresh.low_memory and fresh.t2v.vae.use_tiling and fresh.t2v.vae.use_slicing
    assert np.array_equal(frames, expected)  # tiling does not kick in below 256 px: same clip


def test_oom_twice_is_gpu_oom(tiny_dir):
    fresh = VideoGenerator.load(settings_for(tiny_dir))
    fresh.t2v = OomDouble(fresh.t2v, failures=2)
    with pytest.raises(GenerationError) as info:
        render(fresh)
    assert info.value.reason is Reason.GPU_OOM
    assert info.value.message == (
        "out of GPU memory after a low-memory retry: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert fresh.t2v.calls == 2
    object.__setattr__(fresh.t2v, "failures", 3)  # already in low-memory mode: no second retry
    with pytest.raises(GenerationError, match="^out of GPU memory in low-memory mode"):
        render(fresh)
    assert fresh.t2v.calls == 3


# --- fast-path options ---------------------------------------------------------------------------------------


def test_step_distillation_lora_is_fused_into_the_transformer(tiny_dir, tmp_path, gen):
    """A LoRA file in diffusers format (as published for few-step Wan samplers) is loaded and fused: the
    weights become W + B @ A and no LoRA layers remain (full speed, shared by both pipelines)."""
    from safetensors.torch import save_file

    rng = torch.Generator().manual_seed(0)
    base_q = gen.t2v.transformer.blocks[0].attn1.to_q.weight.detach().clone()
    a = torch.randn(4, base_q.shape[1], generator=rng) * 0.3
    b = torch.randn(base_q.shape[0], 4, generator=rng) * 0.3
    lora = {"transformer.blocks.0.attn1.to_q.lora_A.weight": a, "transformer.blocks.0.attn1.to_q.lora_B.weight": b}
    save_file(lora, tmp_path / "distill_lora.safetensors")
    fast = VideoGenerator.load(settings_for(tiny_dir, lora_path=str(tmp_path / "distill_lora.safetensors")))
    fused = fast.t2v.transformer.blocks[0].attn1.to_q
    assert type(fused) is torch.nn.Linear and fast.i2v.transformer is fast.t2v.transformer
    assert torch.allclose(fused.weight.detach(), base_q + b @ a, atol=1e-5)
    few_steps = dict(steps=4, guidance_scale=1.0)
    assert not np.array_equal(render(fast, **few_steps), render(gen, **few_steps))


def test_attention_backend_option(tiny_dir, gen):
    native = VideoGenerator.load(settings_for(tiny_dir, attention_backend="native"))
    assert np.array_equal(render(native), render(gen))  # "native" is torch SDPA, the default: same clip
    with pytest.raises(ValueError, match="must be one of the following"):
        VideoGenerator.load(settings_for(tiny_dir, attention_backend="no-such-backend"))


def test_offload_options_are_ignored_on_cpu(tiny_dir, gen):
    offloaded = VideoGenerator.load(settings_for(tiny_dir, offload="model", vae_tiling=True))
    assert offloaded.t2v.vae.use_tiling and offloaded.t2v.vae.use_slicing
    assert np.array_equal(render(offloaded), render(gen))


# --- speed options (each runs on the CPU with the tiny model; their GPU figures are in BENCHMARKS.md) -------


@pytest.mark.parametrize(
    "option",
    [{"quantize": "fp8_weight_only"}, {"step_cache": "first_block", "step_cache_threshold": 0.2},
     {"attention_backend": "native"}],
    ids=["fp8-weights", "first-block-cache", "attention-backend"],
)
def test_speed_option_renders_frames_of_the_right_shape(tiny_dir, option):
    fast = VideoGenerator.load(settings_for(tiny_dir, **option))
    frames = render(fast, steps=6)
    assert frames.shape == (PARAMS.num_frames, PARAMS.height, PARAMS.width, 3) and frames.dtype == np.uint8


def test_first_block_cache_skips_work_on_later_steps(tiny_dir):
    cached = VideoGenerator.load(settings_for(tiny_dir, step_cache="first_block", step_cache_threshold=0.2))
    ffn_calls: list[int] = []  # the last block's feed-forward runs only when the block is not skipped
    handle = cached.t2v.transformer.blocks[-1].ffn.register_forward_hook(lambda *_: ffn_calls.append(1))
    try:
        render(cached, steps=8)
    finally:
        handle.remove()
    assert 1 <= len(ffn_calls) < 8 * 2  # 8 steps x 2 CFG halves without the cache


def test_fp8_activations_need_an_fp8_gpu(tiny_dir):
    from skuvid.errors import FatalError

    with pytest.raises(FatalError, match="compute capability"):
        VideoGenerator.load(settings_for(tiny_dir, quantize="fp8"))
