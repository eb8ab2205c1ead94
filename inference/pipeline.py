"""The diffusers runtime: Wan2.2 TI2V-5B (or the tiny stand-in) loaded once per worker, prompt (+ photo) in,
uint8 frames out.

One set of weights serves both tasks: ``WanPipeline`` (text to video) is loaded with ``from_pretrained`` and
``WanImageToVideoPipeline`` (product photo as the first frame) is built from the very same components, so the
5 B transformer, the 5.7 B text encoder and the VAE are in memory once. TI2V-5B conditions on the photo
through ``expand_timesteps``: the photo's VAE latent is pinned as the first latent frame (timestep 0 there),
no CLIP image encoder is involved, and diffusers 0.42.1 ignores ``last_image`` in that mode, so it is not
offered here.

Failure contract: every error leaving ``generate`` is a ``GenerationError`` with a ``Reason``:
``gpu_oom`` (after one retry in low-memory mode), ``invalid_output`` (NaN/inf or wrong shape),
``invalid_params`` (a size the model cannot render) or ``render_error`` (anything else the pipeline raised).
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from inference.image_fetch import fit_image
from inference.text_cache import TextEmbeddingCache
from inference.tiny_model import ensure_tiny_model
from schemas.events import Reason, RenderParams
from skuvid.errors import FatalError, Outcome, SkuvidError
from skuvid.settings import TINY_MODEL, Settings

log = logging.getLogger(__name__)

MAX_SEQUENCE_LENGTH = 512  # UMT5 tokens per prompt, as the official pipeline


class GenerationError(SkuvidError):
    """Generation failed; ``reason`` steers the worker, ``message`` says what happened. Out of GPU memory is
    transient (the worker retries the request later, bounded); every other reason is permanent for the request."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message, reason=reason, kind=Outcome.RETRY if reason is Reason.GPU_OOM else Outcome.FAILED)


@dataclass(frozen=True)
class RuntimeOptions:
    """The speed and memory knobs of the runtime (see the Settings fields of the same names)."""

    lora_path: str | None = None
    compile_transformer: bool = False
    attention_backend: str | None = None
    vae_tiling: bool = False
    offload: Literal["none", "model", "group"] = "none"
    image_fit: Literal["pad", "crop"] = "pad"
    text_encoder_device: Literal["auto", "cpu"] = "auto"
    text_cache_entries: int = 64
    quantize: Literal["none", "fp8", "fp8_weight_only"] = "none"
    step_cache: Literal["none", "first_block"] = "none"
    step_cache_threshold: float = 0.1

    @classmethod
    def from_settings(cls, settings: Settings) -> RuntimeOptions:
        return cls(
            lora_path=settings.lora_path, compile_transformer=settings.compile_transformer,
            attention_backend=settings.attention_backend, vae_tiling=settings.vae_tiling,
            offload=settings.offload, image_fit=settings.image_fit,
            text_encoder_device=settings.text_encoder_device, text_cache_entries=settings.text_cache_entries,
            quantize=settings.quantize, step_cache=settings.step_cache,
            step_cache_threshold=settings.step_cache_threshold,
        )


StepCallback = Callable[[int, int], None]  # (denoising step done, steps in all)


def resolve_device(name: str) -> torch.device:
    """'auto' is the first CUDA GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def transformer_dtype_for(device: torch.device) -> torch.dtype:
    """bf16 on GPUs (the model's training dtype); float32 on CPU, where bf16 matmuls are slow and lossy."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def flow_scheduler(base_config: Any, flow_shift: float):  # -> UniPCMultistepScheduler
    """UniPC in flow-prediction mode with ``flow_shift``, keeping the rest of the model's scheduler config."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler.from_config(
        base_config, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift
    )


class VideoGenerator:
    """Wan2.2 TI2V-5B text/image-to-video on one device. Load once per worker with ``load``; not re-entrant
    (calls are serialised by a lock, the GPU runs one job at a time)."""

    def __init__(self, t2v: Any, *, model_id: str, device: torch.device, options: RuntimeOptions) -> None:
        from diffusers import WanImageToVideoPipeline

        self.model_id = model_id
        self.device = device
        self.options = options
        self.t2v = t2v
        self.i2v = None
        if t2v.config.expand_timesteps:
            self.i2v = WanImageToVideoPipeline(
                tokenizer=t2v.tokenizer, text_encoder=t2v.text_encoder, vae=t2v.vae, scheduler=t2v.scheduler,
                transformer=t2v.transformer, transformer_2=t2v.transformer_2,
                boundary_ratio=t2v.config.boundary_ratio, expand_timesteps=True,
            )
            self.i2v.set_progress_bar_config(disable=True)
        self._base_scheduler_config = t2v.scheduler.config
        self._schedulers: dict[float, Any] = {}
        self._lock = threading.Lock()
        self.low_memory = False
        self._model_offload = device.type == "cuda" and options.offload == "model"
        self._offload_owner: Any = None
        patch = t2v.transformer.config.patch_size
        self.size_multiple = t2v.vae_scale_factor_spatial * max(patch[1], patch[2])
        self.frame_multiple = t2v.vae_scale_factor_temporal
        self.embeddings = TextEmbeddingCache(self._encode_text, options.text_cache_entries)

    # --- loading --------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, settings: Settings) -> VideoGenerator:
        """Load the model named by ``settings.model`` (hub id, folder, or 'tiny', built on first use)."""
        from diffusers import AutoencoderKLWan, WanPipeline

        device = resolve_device(settings.device)
        source = str(ensure_tiny_model(settings.tiny_model_dir)) if settings.model == TINY_MODEL else settings.model
        dtype = transformer_dtype_for(device)
        try:
            vae = AutoencoderKLWan.from_pretrained(source, subfolder="vae", dtype=torch.float32)
            t2v = WanPipeline.from_pretrained(source, vae=vae, dtype=dtype)
        except (OSError, ValueError) as exc:  # no weights on disk and none to download, or not a diffusers folder
            raise FatalError(
                f"model {settings.model!r} cannot be loaded ({str(exc).splitlines()[0][:300]}); set SKUVID_MODEL "
                "to a local folder holding the diffusers weights of Wan2.2 TI2V-5B, or to 'tiny' for the "
                "built-in random-weight model", reason=Reason.MODEL_UNAVAILABLE,
            ) from None
        t2v.set_progress_bar_config(disable=True)
        t2v.scheduler = flow_scheduler(t2v.scheduler.config, settings.flow_shift)
        options = RuntimeOptions.from_settings(settings)
        if options.lora_path:
            _fuse_lora(t2v, options.lora_path)
        gen = cls(t2v, model_id=settings.model, device=device, options=options)
        gen._place()
        gen._speed_up()
        log.info("loaded %s on %s (transformer %s, i2v %s)", source, device, dtype, gen.i2v is not None)
        return gen

    def _place(self) -> None:
        """Move the weights to the device, or set up offloading (GPU only; ignored on CPU)."""
        if self.options.vae_tiling:
            self._enable_vae_tiling()
        if self.device.type != "cuda" or self.options.offload == "none":
            self.t2v.to(self.device)
            if self.options.text_encoder_device == "cpu":
                self.t2v.text_encoder.to("cpu")  # 11 GB less on the GPU; the embedding cache hides its speed
        elif self._model_offload:
            self._use_model_offload(self.t2v)
        else:
            self._use_group_offload()

    def _speed_up(self) -> None:
        apply_speed_options(self.t2v.transformer, self.options, self.device)

    def _use_model_offload(self, pipe: Any) -> None:
        """Whole-model CPU offload (accelerate hooks). The hooks belong to one pipeline object, so they move
        to the other pipeline when the task switches between text and image conditioning."""
        if self._offload_owner is pipe:
            return
        if self._offload_owner is not None:
            self._offload_owner.remove_all_hooks()
        pipe.enable_model_cpu_offload(device=self.device)
        self._offload_owner = pipe

    def _use_group_offload(self) -> None:
        """Block-level group offload of the two big models (works for both pipelines); the VAE stays on GPU."""
        from diffusers.hooks import apply_group_offloading

        kwargs = dict(onload_device=self.device, offload_device=torch.device("cpu"), offload_type="block_level",
                      num_blocks_per_group=1, use_stream=True)
        self.t2v.transformer.enable_group_offload(**kwargs)
        apply_group_offloading(self.t2v.text_encoder, **kwargs)
        self.t2v.vae.to(self.device)

    def _enable_vae_tiling(self) -> None:
        self.t2v.vae.enable_tiling()
        self.t2v.vae.enable_slicing()

    # --- generation -----------------------------------------------------------------------------------------

    def generate(
        self, *, prompt: str, negative_prompt: str, params: RenderParams, image: Image.Image | None = None,
        on_step: StepCallback | None = None,
    ) -> np.ndarray:
        """Render one clip: uint8 array (num_frames, height, width, 3). Same inputs and seed, same frames
        (on one device). ``guidance_scale <= 1`` disables classifier-free guidance (one forward per step).
        ``on_step(n, total)`` is called after each denoising step (progress display).

        One clip per call, by design: at 12,090 (480p) to 27,280 (720p) tokens per clip every matmul is
        already large enough to fill the GPU, so batching clips adds latency and couples their failures
        without raising clips per GPU-second (see BENCHMARKS.md). The GPU is kept busy by the renderer's
        pipeline instead: post-processing and upload of one job overlap the generation of the next."""
        self._check_params(params)
        pipe = self.t2v if image is None else self.i2v
        if pipe is None:
            raise GenerationError(
                Reason.RENDER_ERROR, f"model {self.model_id!r} has no image-to-video mode (expand_timesteps off)"
            )
        kwargs: dict[str, Any] = dict(
            prompt_embeds=self.embeddings.get(prompt),
            height=params.height, width=params.width, num_frames=params.num_frames,
            num_inference_steps=params.steps, guidance_scale=params.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(params.seed),
            output_type="np", max_sequence_length=MAX_SEQUENCE_LENGTH,
        )
        if params.guidance_scale > 1.0:  # the pipeline's own rule for classifier-free guidance
            kwargs["negative_prompt_embeds"] = self.embeddings.get(negative_prompt)
        if image is not None:
            kwargs["image"] = fit_image(image, params.width, params.height, policy=self.options.image_fit)
        if on_step is not None:
            kwargs["callback_on_step_end"] = _step_reporter(on_step, params.steps)
        with self._lock:
            frames = self._call_with_oom_retry(pipe, params.flow_shift, kwargs)
        return _check_output(frames[0], params)

    def _encode_text(self, text: str) -> torch.Tensor:
        """UMT5 embedding of ``text`` (1, 512, 4096) on the generation device, in the transformer's dtype;
        the encoder runs wherever it was placed (GPU, or CPU with ``text_encoder_device=cpu``)."""
        with torch.no_grad():
            embeds, _ = self.t2v.encode_prompt(
                prompt=text, do_classifier_free_guidance=False, max_sequence_length=MAX_SEQUENCE_LENGTH,
                device=self.device, dtype=self.t2v.transformer.dtype,
            )
        return embeds

    def _check_params(self, params: RenderParams) -> None:
        if params.width % self.size_multiple or params.height % self.size_multiple:
            raise GenerationError(
                Reason.INVALID_PARAMS,
                f"width and height must be multiples of {self.size_multiple}, got {params.width}x{params.height}",
            )
        if params.num_frames % self.frame_multiple != 1:
            raise GenerationError(
                Reason.INVALID_PARAMS,
                f"num_frames must be {self.frame_multiple}n+1, got {params.num_frames}",
            )

    def _call_with_oom_retry(self, pipe: Any, flow_shift: float, kwargs: dict[str, Any]) -> np.ndarray:
        """Run once; on CUDA OOM free memory, switch to low-memory mode for good and run once more."""
        failure = None
        try:
            return self._call(pipe, flow_shift, kwargs)
        except torch.cuda.OutOfMemoryError as exc:
            failure = str(exc).splitlines()[0] if str(exc) else "CUDA out of memory"
        # Out of the except block: the traceback (and the activations its frames hold) is gone now.
        _free_memory()
        if self.low_memory:
            raise GenerationError(Reason.GPU_OOM, f"out of GPU memory in low-memory mode: {failure}")
        log.warning("CUDA OOM (%s); retrying in low-memory mode (VAE tiling + CPU offload)", failure)
        self._enter_low_memory(pipe)
        try:
            return self._call(pipe, flow_shift, kwargs)
        except torch.cuda.OutOfMemoryError as exc:
            failure = str(exc).splitlines()[0] if str(exc) else "CUDA out of memory"
        _free_memory()
        raise GenerationError(Reason.GPU_OOM, f"out of GPU memory after a low-memory retry: {failure}")

    def _enter_low_memory(self, pipe: Any) -> None:
        """VAE tiling/slicing always; whole-model CPU offload on a GPU unless offloading is already on."""
        self.low_memory = True
        self._enable_vae_tiling()
        if self.device.type == "cuda" and self.options.offload == "none":
            self._model_offload = True
            self._use_model_offload(pipe)

    def _call(self, pipe: Any, flow_shift: float, kwargs: dict[str, Any]) -> np.ndarray:
        if self._model_offload:
            self._use_model_offload(pipe)
        pipe.scheduler = self._scheduler(flow_shift)
        try:
            out = pipe(**kwargs)
        except torch.cuda.OutOfMemoryError:
            raise
        except (RuntimeError, ValueError, TypeError) as exc:
            raise GenerationError(Reason.RENDER_ERROR, f"pipeline failed: {exc.__class__.__name__}: {exc}") from exc
        return np.asarray(out.frames)

    def _scheduler(self, flow_shift: float) -> Any:
        if flow_shift not in self._schedulers:
            self._schedulers[flow_shift] = flow_scheduler(self._base_scheduler_config, flow_shift)
        return self._schedulers[flow_shift]


def _check_output(clip: np.ndarray, params: RenderParams) -> np.ndarray:
    """Float frames in [0, 1] -> uint8 (F, H, W, 3); NaN/inf or a wrong shape raises ``invalid_output``."""
    expected = (params.num_frames, params.height, params.width, 3)
    if clip.shape != expected:
        raise GenerationError(Reason.INVALID_OUTPUT, f"frames have shape {clip.shape}, expected {expected}")
    finite = np.isfinite(clip)
    if not finite.all():
        bad = int(clip.size - np.count_nonzero(finite))
        raise GenerationError(Reason.INVALID_OUTPUT, f"{bad} of {clip.size} output values are NaN or infinite")
    return np.rint(np.clip(clip, 0.0, 1.0) * 255.0).astype(np.uint8)


def apply_speed_options(transformer: Any, options: RuntimeOptions, device: torch.device) -> None:
    """The transformer's speed options, in the order they compose: FP8 weights (and activations) with
    torchao, the attention backend, the step cache (diffusers' First Block Cache: later blocks are skipped on
    steps whose first-block residual barely changed), then regional ``torch.compile`` of the repeated blocks.
    Shared with the GPU benchmark, so what is measured is what the worker runs. Raises ``FatalError`` for an
    option this device cannot run."""
    if options.quantize != "none":
        _quantize_fp8(transformer, activations=options.quantize == "fp8", device=device)
    if options.attention_backend:
        transformer.set_attention_backend(options.attention_backend)
    if options.step_cache == "first_block":
        from diffusers.hooks import FirstBlockCacheConfig

        transformer.enable_cache(FirstBlockCacheConfig(threshold=options.step_cache_threshold))
    if options.compile_transformer:
        transformer.compile_repeated_blocks(fullgraph=True)


def _quantize_fp8(transformer: Any, *, activations: bool, device: torch.device) -> None:
    """FP8 (e4m3) weights; with ``activations`` also dynamically quantized activations (row-wise scales), which
    needs a GPU with FP8 tensor cores (compute capability >= 8.9: Ada, Hopper)."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Float8WeightOnlyConfig, quantize_

    if activations and not (device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)):
        raise FatalError(f"SKUVID_QUANTIZE=fp8 needs a CUDA GPU with compute capability >= 8.9, not {device}; "
                         "use fp8_weight_only or none", reason=Reason.INVALID_PARAMS)
    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig() if activations else Float8WeightOnlyConfig())


def _step_reporter(on_step: StepCallback, total: int) -> Callable[..., dict]:
    """A diffusers ``callback_on_step_end`` that reports the step and changes nothing."""

    def callback(_pipe: Any, step: int, _timestep: Any, tensors: dict) -> dict:
        on_step(step + 1, total)
        return tensors

    return callback


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _fuse_lora(pipe: Any, lora_path: str) -> None:
    """Load a (step-distillation) LoRA and fuse it into the transformer weights, so both pipelines use it at
    full speed; the LoRA layers themselves are dropped afterwards. A local file is loaded from its folder."""
    path = Path(lora_path)
    if path.is_file():
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="distill")
    else:
        pipe.load_lora_weights(lora_path, adapter_name="distill")
    pipe.fuse_lora(components=["transformer"], lora_scale=1.0)
    pipe.unload_lora_weights()
