"""A tiny random-weight Wan2.2 TI2V pipeline built from the real classes, for CPU tests and demos.

The full model (5 B transformer + 5.7 B text encoder) cannot run on a CPU and cannot be downloaded in CI, but
every code path of the runtime (tokenizer, UMT5 encoder, TI2V transformer with per-token timesteps, the
residual 48-channel VAE with 2x2 patchify and 4x16x16 compression, UniPC flow scheduler, save/load) can be
exercised with the same classes at toy width. The folder written here is a normal diffusers pipeline folder
(``model_index.json`` + subfolders), so both ``WanPipeline`` and ``WanImageToVideoPipeline`` load it with the
very same ``from_pretrained`` call the real model uses. Building is seeded: two builds are bit-identical.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Final

TINY_SEED: Final = 0
#: Geometry that must match TI2V-5B so the tiny model exercises the same shapes and code paths.
LATENT_CHANNELS: Final = 48
PATCH_SIZE: Final = (1, 2, 2)
VAE_PATCH: Final = 2
SCALE_TEMPORAL: Final = 4
SCALE_SPATIAL: Final = 16
TEXT_DIM: Final = 32
VOCAB_SIZE: Final = 600

#: A fixed corpus for the tokenizer: product-video words in both prompt languages, and the ASCII letters.
_CORPUS: Final = (
    "a product video of wireless noise cancelling headphones on a clean white studio background",
    "slow camera orbit, soft light, high detail, commercial photography, 4k, sharp focus",
    "stainless steel kitchen knife set, cutting board, fresh vegetables, warm morning light",
    "lipstick and skincare cream bottles, pastel colours, elegant close-up, glossy reflections",
    "blurry, low quality, distorted, watermark, text, extra limbs, static frame, overexposed",
    "产品视频 降噪蓝牙耳机 白色背景 柔和灯光 高清 细节 镜头缓慢环绕 商业摄影",
    "不锈钢厨具 刀具 砧板 新鲜蔬菜 温暖晨光 口红 护肤品 精致 特写 光泽",
    "模糊 低质量 变形 水印 文字 多余的肢体 静止画面 过曝 色彩失真",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?-()'\"",
)


def build_tiny_model(path: Path, *, seed: int = TINY_SEED) -> Path:
    """Write the tiny TI2V pipeline to ``path`` (replacing it) and return ``path``.

    Written to a temporary sibling first and renamed, so a crashed build never leaves a half folder that
    ``ensure_tiny_model`` would take for a finished one.
    """
    import torch
    from diffusers import WanPipeline

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=path.parent))
    try:
        with torch.random.fork_rng(devices=[]):
            tokenizer = _tokenizer()
            pipe = WanPipeline(
                tokenizer=tokenizer,
                text_encoder=_text_encoder(seed, len(tokenizer)),
                vae=_vae(seed + 1),
                scheduler=_scheduler(),
                transformer=_transformer(seed + 2),
                expand_timesteps=True,
            )
        pipe.save_pretrained(tmp)
        _stamp(tmp, seed)
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        try:
            tmp.rename(path)
        except OSError:
            if not _is_built(path, seed):  # another process won the race with the same build: keep its folder
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def ensure_tiny_model(path: Path, *, seed: int = TINY_SEED) -> Path:
    """The tiny model folder at ``path``, built first if it is missing or was built with another seed."""
    path = Path(path)
    return path if _is_built(path, seed) else build_tiny_model(path, seed=seed)


def _is_built(path: Path, seed: int) -> bool:
    stamp = path / "skuvid_tiny.json"
    try:
        return json.loads(stamp.read_text()).get("seed") == seed and (path / "model_index.json").is_file()
    except (OSError, ValueError):
        return False


def _stamp(folder: Path, seed: int) -> None:
    (folder / "skuvid_tiny.json").write_text(json.dumps({"seed": seed, "kind": "skuvid tiny Wan2.2 TI2V"}) + "\n")


def _tokenizer():  # -> transformers.PreTrainedTokenizerFast
    """A BPE tokenizer trained on ``_CORPUS`` with T5's special tokens (pad 0, eos 1, unk 2; eos appended)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=["<pad>", "</s>", "<unk>"], show_progress=False
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.decoder = decoders.Metaspace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def _text_encoder(seed: int, vocab_size: int):  # -> transformers.UMT5EncoderModel
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    config = UMT5Config(
        vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=0,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=32,
        dropout_rate=0.0, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
    )
    return UMT5EncoderModel(config).eval()


def _vae(seed: int):  # -> diffusers.AutoencoderKLWan
    """TI2V-5B's VAE layout at toy width: z 48, residual blocks, 2x2 patchify, 4x temporal / 16x spatial.

    Three up/down levels are kept (they make the 16x spatial compression real, so frames decode at full
    size); the width is 4 channels because CPU conv3d is slow and the decoder dominates tiny-model runtime.
    """
    import torch
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(
        base_dim=4, decoder_base_dim=4, z_dim=LATENT_CHANNELS, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True], is_residual=True, in_channels=3 * VAE_PATCH**2,
        out_channels=3 * VAE_PATCH**2, patch_size=VAE_PATCH, scale_factor_temporal=SCALE_TEMPORAL,
        scale_factor_spatial=SCALE_SPATIAL, latents_mean=[0.0] * LATENT_CHANNELS,
        latents_std=[1.0] * LATENT_CHANNELS,
    ).eval()


def _transformer(seed: int):  # -> diffusers.WanTransformer3DModel
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=PATCH_SIZE, num_attention_heads=2, attention_head_dim=12, in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=32, num_layers=2,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64,
    ).eval()


def _scheduler():  # -> diffusers.UniPCMultistepScheduler
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
