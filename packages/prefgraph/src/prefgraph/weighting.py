"""Similarity weighting of a user's history against a reference item (reference-conditioned generation).

Used to personalise a given reference item: history items that resemble the reference get most
of the weight, so the user's taste is read from the relevant part of the history (RAGAR-style
retrieval-augmented differential weighting).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["history_weights", "weighted_history"]


def history_weights(
    history: Tensor,
    reference: Tensor,
    temperature: float = 0.1,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Softmax over cosine similarities between history items and a reference item.

    .. math::
        w_h = \frac{\exp(\cos(x_h, r) / \tau)}{\sum_{h'} \exp(\cos(x_{h'}, r) / \tau)}

    Small ``temperature`` concentrates the weight on the most similar items; large temperature
    tends to uniform weights.

    Args:
        history: FloatTensor [H, d], or [B, H, d] for a batch of users.
        reference: FloatTensor [d], or [B, d].
        temperature: tau > 0.
        mask: optional BoolTensor [H] / [B, H], ``False`` for padding entries (weight 0).

    Returns:
        FloatTensor [H] / [B, H]; each row sums to 1 (a row with no valid entry is all zeros).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if history.dim() not in (2, 3):
        raise ValueError(f"history must be [H, d] or [B, H, d], got {tuple(history.shape)}")
    if (
        reference.dim() != history.dim() - 1
        or reference.shape[-1] != history.shape[-1]
        or (history.dim() == 3 and reference.shape[0] != history.shape[0])
    ):
        raise ValueError(
            f"reference {tuple(reference.shape)} does not match history {tuple(history.shape)}: "
            "expected [d] for [H, d] or [B, d] for [B, H, d]"
        )
    if history.shape[-2] == 0:
        raise ValueError("history is empty (H = 0)")
    similarity = F.cosine_similarity(history, reference.unsqueeze(-2), dim=-1)  # [..., H]
    logits = similarity / temperature
    if mask is None:
        return torch.softmax(logits, dim=-1)
    if mask.shape != logits.shape or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a BoolTensor of shape {tuple(logits.shape)}, got {tuple(mask.shape)} {mask.dtype}"
        )
    weights = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
    # Rows without any valid entry give 0/0 = NaN in softmax; they carry no history, so weight 0.
    return torch.nan_to_num(weights, nan=0.0)


def weighted_history(
    history: Tensor,
    reference: Tensor,
    temperature: float = 0.1,
    mask: Tensor | None = None,
) -> Tensor:
    """History summary conditioned on the reference: ``sum_h w_h * history_h``.

    Shapes as in :func:`history_weights`; returns [d] or [B, d].
    """
    weights = history_weights(history, reference, temperature, mask)
    return (weights.unsqueeze(-1) * history).sum(dim=-2)
