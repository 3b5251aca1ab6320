"""Unit-norm CLIP embeddings from a ``CLIPModel``, whatever transformers version.

transformers 5 returns output objects from ``get_image_features`` / ``get_text_features``
(the projected embedding in ``pooler_output``); 4.x returned the tensor itself.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from transformers import CLIPModel

__all__ = ["image_embeddings", "text_embeddings"]


def _projected(output: torch.Tensor | object) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output  # type: ignore[attr-defined]


def image_embeddings(model: CLIPModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """[B, projection_dim] unit vectors for ``pixel_values`` [B, 3, S, S] (the processor's output)."""
    return F.normalize(_projected(model.get_image_features(pixel_values=pixel_values)), dim=-1)


def text_embeddings(model: CLIPModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[B, projection_dim] unit vectors for token ids [B, T]."""
    return F.normalize(_projected(model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)), dim=-1)
