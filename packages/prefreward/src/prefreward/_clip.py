"""Differentiable CLIP embeddings for generated images and texts.

Generated images arrive as float tensors straight from a decoder, so the CLIP image
processor (PIL, uint8, non-differentiable) cannot be used. ``ClipEmbedder`` does the same
resize → center crop → normalise in torch so gradients reach the pixels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from transformers import CLIPModel, PreTrainedTokenizerBase

__all__ = ["OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "ImageRange", "ClipEmbedder", "projected_embedding"]

# The normalisation of OpenAI's CLIP checkpoints, used when nothing else is given.
OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

ImageRange = Literal["-1,1", "0,1"]


def projected_embedding(output: torch.Tensor | Any) -> torch.Tensor:
    """The projected embedding from ``get_image_features`` / ``get_text_features``.

    transformers 5 returns an output object (the projection in ``pooler_output``); 4.x the tensor.
    """
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _normalisation_from_folder(folder: Path) -> tuple[list[float], list[float]] | None:
    """``image_mean`` / ``image_std`` saved beside a checkpoint (processor or image-processor JSON)."""
    for name in ("preprocessor_config.json", "processor_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        config = json.loads(path.read_text())
        config = config.get("image_processor", config)  # processor_config nests the image processor
        if "image_mean" in config and "image_std" in config:
            return list(config["image_mean"]), list(config["image_std"])
    return None


class ClipEmbedder(nn.Module):
    """Unit-norm CLIP embeddings: ``embed_images`` (differentiable w.r.t. pixels) and ``embed_texts``.

    The CLIP weights are frozen (``requires_grad=False``) and kept in eval mode: a reward is a
    fixed judge; gradients still flow through it to the images.

    Args:
        model: any ``transformers.CLIPModel``.
        tokenizer: its tokenizer (a ``CLIPProcessor`` also works: its ``tokenizer`` is used).
        image_mean, image_std: per-channel normalisation of the checkpoint's processor
            (OpenAI's by default; the pmg zoo's tiny CLIP uses 0.5 / 0.5, which
            ``from_pretrained`` reads from the saved processor config).
        image_range: the value range of the images given to ``embed_images``: ``"-1,1"``
            (a diffusers VAE decode) or ``"0,1"``.
    """

    def __init__(
        self,
        model: CLIPModel,
        tokenizer: PreTrainedTokenizerBase | Any,
        image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        image_std: Sequence[float] = OPENAI_CLIP_STD,
        image_range: ImageRange = "-1,1",
    ) -> None:
        super().__init__()
        if image_range not in ("-1,1", "0,1"):
            raise ValueError(f"image_range must be '-1,1' or '0,1', got {image_range!r}")
        if len(image_mean) != 3 or len(image_std) != 3:
            raise ValueError("image_mean and image_std need one value per RGB channel")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        self.image_range: ImageRange = image_range
        self.image_size = int(model.config.vision_config.image_size)
        self.max_text_length = min(
            int(getattr(self.tokenizer, "model_max_length", 77) or 77),
            int(model.config.text_config.max_position_embeddings),
        )
        self.register_buffer("image_mean", torch.tensor(list(image_mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(list(image_std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> ClipEmbedder:
        # The judge stays in eval mode (no dropout) whatever the enclosing module does.
        super().train(mode)
        self.model.eval()
        return self

    @classmethod
    def from_pretrained(cls, folder: str | Path, image_range: ImageRange = "-1,1", **model_kwargs: Any) -> ClipEmbedder:
        """Load a ``save_pretrained`` CLIP folder (model + tokenizer, and processor config if present)."""
        # Here, not at the top: importing prefreward loads no transformers (CLIP's modelling code alone takes seconds).
        from transformers import AutoTokenizer, CLIPModel

        folder = Path(folder)
        model = CLIPModel.from_pretrained(folder, **model_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        mean, std = _normalisation_from_folder(folder) or (list(OPENAI_CLIP_MEAN), list(OPENAI_CLIP_STD))
        return cls(model, tokenizer, image_mean=mean, image_std=std, image_range=image_range)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def embedding_dim(self) -> int:
        return int(self.model.config.projection_dim)

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] images in ``image_range`` → [B, 3, S, S] CLIP inputs, differentiably.

        Like CLIP's processor: resize the shortest edge to S (bicubic, antialiased when
        shrinking), center crop S×S, normalise with mean/std.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        images = images.to(device=self.image_mean.device, dtype=torch.float32)
        if self.image_range == "-1,1":
            images = (images + 1.0) / 2.0
        size = self.image_size
        height, width = images.shape[-2:]
        if min(height, width) != size:
            scale = size / min(height, width)
            new_hw = (max(size, round(height * scale)), max(size, round(width * scale)))
            images = F.interpolate(images, size=new_hw, mode="bicubic", align_corners=False, antialias=scale < 1.0)
        height, width = images.shape[-2:]
        top, left = (height - size) // 2, (width - size) // 2
        images = images[..., top : top + size, left : left + size]
        return (images - self.image_mean) / self.image_std

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] images in ``image_range`` → [B, projection_dim] unit vectors (differentiable)."""
        pixels = self.pixel_values(images).to(dtype=self.dtype)
        features = projected_embedding(self.model.get_image_features(pixel_values=pixels))
        return F.normalize(features.float(), dim=-1)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """``texts`` (B strings) → [B, projection_dim] unit vectors.

        Token ids are discrete, so nothing upstream can receive gradients; the text tower runs
        under ``no_grad`` to save memory.
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_text_length, return_tensors="pt"
        ).to(self.device)
        with torch.no_grad():
            features = projected_embedding(
                self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens.get("attention_mask"))
            )
        return F.normalize(features.float(), dim=-1)
