"""CLIP consistency scores: prompt text vs sampled frames, product photo vs sampled frames (cosines).

The model (Settings.clip_model: a hub id or a local folder) is loaded once per process with
``from_pretrained`` and reused for every attempt. ``save_tiny_clip`` writes a random-weight CLIP built
from the real transformers classes with a locally built tokenizer, for tests and the offline demo: its
scores are meaningless, which is why the CLIP thresholds can be disabled in Settings.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

from inference.quality import require_frames, sample_indices
from schemas.events import Reason
from skuvid.errors import SkuvidError
from skuvid.settings import TINY_MODEL, Settings


class ClipError(SkuvidError, RuntimeError):
    """The CLIP model cannot be loaded or run."""

    reason = Reason.RENDER_ERROR


@dataclass(frozen=True)
class ClipScores:
    """Cosine similarities in [-1, 1]: means over the sampled frames and the per-frame text values."""

    text: float
    image: float | None
    frame_indices: tuple[int, ...]
    text_per_frame: tuple[float, ...]
    image_per_frame: tuple[float, ...] | None


class ClipScorer:
    """A loaded CLIP model and its processor on one device (inference only)."""

    def __init__(self, model: CLIPModel, processor: CLIPProcessor, device: torch.device) -> None:
        self.model = model.eval().to(device)
        self.processor = processor
        self.device = device
        self.max_tokens = int(model.config.text_config.max_position_embeddings)

    @classmethod
    def load(cls, model_id: str | Path, *, device: str = "cpu") -> ClipScorer:
        """Load model and processor with ``from_pretrained`` (hub id or folder); 'auto' picks CUDA if present.

        Raises ClipError naming the model when it cannot be loaded.
        """
        resolved = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                                else "cpu" if device == "auto" else device)
        try:
            model = CLIPModel.from_pretrained(str(model_id))
            processor = CLIPProcessor.from_pretrained(str(model_id))
        except (OSError, ValueError) as exc:
            raise ClipError(f"cannot load CLIP model {str(model_id)!r}: {exc}") from exc
        return cls(model, processor, resolved)

    @torch.inference_mode()
    def score(self, frames: np.ndarray, text: str, image: Image.Image | None = None, *,
              num_frames: int = 8) -> ClipScores:
        """Score ``num_frames`` evenly sampled frames against ``text`` (truncated to CLIP's 77 tokens)
        and, when given, against the product ``image``."""
        require_frames(frames)
        indices = sample_indices(frames.shape[0], num_frames)
        frame_emb = self._image_embeddings([frames[i] for i in indices])
        text_cos = (frame_emb @ self._text_embedding(text).T).squeeze(1).tolist()
        image_cos: list[float] | None = None
        if image is not None:
            product = self._image_embeddings([np.asarray(image.convert("RGB"))])
            image_cos = (frame_emb @ product.T).squeeze(1).tolist()
        return ClipScores(
            text=float(np.mean(text_cos)),
            image=None if image_cos is None else float(np.mean(image_cos)),
            frame_indices=tuple(int(i) for i in indices),
            text_per_frame=tuple(text_cos),
            image_per_frame=None if image_cos is None else tuple(image_cos),
        )

    def _image_embeddings(self, images: list[np.ndarray]) -> torch.Tensor:
        pixels = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        output = self.model.get_image_features(pixel_values=pixels.to(self.device, self.model.dtype))
        return _unit(output)

    def _text_embedding(self, text: str) -> torch.Tensor:
        tokens = self.processor.tokenizer([text], padding=True, truncation=True, max_length=self.max_tokens,
                                          return_tensors="pt").to(self.device)
        output = self.model.get_text_features(input_ids=tokens["input_ids"],
                                              attention_mask=tokens["attention_mask"])
        return _unit(output)


@lru_cache(maxsize=2)
def get_clip_scorer(model_id: str, device: str = "auto") -> ClipScorer:
    """The process-wide scorer for ``model_id`` on ``device``: loaded on first use, then reused."""
    return ClipScorer.load(model_id, device=device)


def clip_from_settings(settings: Settings) -> ClipScorer | None:
    """The scorer Settings ask for: None when ``clip_model`` is unset, the built-in tiny CLIP for "tiny"."""
    if not settings.clip_model:
        return None
    model_id = settings.clip_model
    if model_id == TINY_MODEL:
        model_id = str(ensure_tiny_clip(settings.tiny_clip_dir))
    return get_clip_scorer(model_id, settings.device)


def ensure_tiny_clip(path: Path) -> Path:
    """Build the tiny CLIP at ``path`` once; concurrent builders race on an atomic rename, not on files."""
    if (path / "config.json").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-clip-", dir=path.parent))
    save_tiny_clip(tmp)
    try:
        tmp.rename(path)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def save_tiny_clip(out_dir: Path, *, seed: int = 0, image_size: int = 32) -> Path:
    """Write a random-weight CLIP (2 layers, width 32) plus processor to ``out_dir``; returns ``out_dir``.

    The tokenizer is a byte-level BPE over the 256 byte symbols without merges, so any text (CJK
    included) tokenises without a downloaded vocabulary. Deterministic for a given ``seed``.
    """
    vocab = _byte_vocab()
    special = {"bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
               "pad_token_id": vocab["<|endoftext|>"]}
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 77, **special},
        vision_config={"image_size": image_size, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 2},
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    images = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                crop_size={"height": image_size, "width": image_size})
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(out_dir)
    return out_dir


def _unit(output: torch.Tensor | object) -> torch.Tensor:
    """L2-normalised float32 embeddings from a features call (a tensor, or an output with pooler_output)."""
    features = output if isinstance(output, torch.Tensor) else output.pooler_output
    return torch.nn.functional.normalize(features.float(), dim=-1).cpu()


def _byte_vocab() -> dict[str, int]:
    """GPT-2/CLIP byte-to-unicode symbols, each alone and as a word end (``</w>``), then the specials."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = [chr(b) for b in printable]
    symbols += [chr(256 + n) for n in range(256 - len(printable))]
    tokens = [*symbols, *(s + "</w>" for s in symbols), "<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}
