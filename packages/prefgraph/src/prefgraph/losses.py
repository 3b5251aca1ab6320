"""Training objectives: BPR, L2 on ego embeddings, InfoNCE, and modality dropout masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["bpr_loss", "l2_regularization", "info_nce_loss", "modality_dropout_mask"]


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    r"""Mean Bayesian Personalised Ranking loss :math:`-\log\sigma(s^+ - s^-)`.

    Args:
        pos_scores: [B], score of each example's positive item.
        neg_scores: [B] (one negative per example) or [B, N] (N negatives per example; the
            positive is compared with each).

    Returns:
        Scalar tensor, averaged over all (positive, negative) pairs.
    """
    if neg_scores.dim() == pos_scores.dim() + 1:
        pos_scores = pos_scores.unsqueeze(-1)
    if pos_scores.shape[0] != neg_scores.shape[0]:
        raise ValueError(
            f"pos_scores and neg_scores disagree on batch size: {tuple(pos_scores.shape)} vs "
            f"{tuple(neg_scores.shape)}"
        )
    # softplus(neg - pos) == -logsigmoid(pos - neg), numerically stable for large margins
    return F.softplus(neg_scores - pos_scores).mean()


def l2_regularization(*embeddings: Tensor, batch_size: int) -> Tensor:
    r"""LightGCN's regulariser :math:`\tfrac{1}{2B} \sum \lVert e \rVert^2` over the batch's
    layer-0 ("ego") embeddings.

    Regularising only the rows a batch touches (rather than the whole table) keeps the penalty's
    scale independent of the number of users and items; that is the original LightGCN choice.

    Args:
        *embeddings: any number of tensors [B, d] or [B, N, d] (users, positive items,
            negative items, for every modality).
        batch_size: B, the number of training examples the rows belong to.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not embeddings:
        raise ValueError("l2_regularization needs at least one tensor")
    total = sum(e.pow(2).sum() for e in embeddings)
    return 0.5 * total / batch_size


def info_nce_loss(queries: Tensor, keys: Tensor, temperature: float = 0.2) -> Tensor:
    r"""InfoNCE with in-batch negatives: row ``b`` of ``queries`` should match row ``b`` of ``keys``.

    Both sides are L2-normalised (cosine similarity), logits are divided by ``temperature``.

    Args:
        queries: [B, d].
        keys: [B, d].
        temperature: > 0; smaller sharpens the softmax.

    Returns:
        Scalar tensor, the mean cross-entropy over the B rows.
    """
    if queries.shape != keys.shape or queries.dim() != 2:
        raise ValueError(
            f"queries and keys must both be [B, d] with equal shapes, got {tuple(queries.shape)} "
            f"and {tuple(keys.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).t() / temperature
    targets = torch.arange(queries.size(0), device=queries.device)
    return F.cross_entropy(logits, targets)


def modality_dropout_mask(
    batch_size: int,
    num_modalities: int,
    drop_probability: float,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """BoolTensor [B, M], ``True`` = modality kept for that example.

    Each modality is dropped independently with ``drop_probability``; an example whose every
    modality was dropped keeps one chosen uniformly at random, so no score is left empty.
    """
    if not 0.0 <= drop_probability < 1.0:
        raise ValueError(f"drop_probability must be in [0, 1), got {drop_probability}")
    keep = torch.rand(batch_size, num_modalities, device=device, generator=generator) >= drop_probability
    empty = ~keep.any(dim=1)
    if empty.any():
        rescue = torch.randint(num_modalities, (int(empty.sum()),), device=device, generator=generator)
        keep[empty.nonzero().squeeze(1), rescue] = True
    return keep
