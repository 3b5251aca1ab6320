"""Training-batch sampling for BPR: positives from the graph's edges, uniform negatives."""

from __future__ import annotations

import torch
from torch import Tensor

from .graph import InteractionGraph

__all__ = ["sample_negatives", "sample_bpr_batch"]


def sample_negatives(
    graph: InteractionGraph,
    users: Tensor,
    num_negatives: int = 1,
    *,
    max_retries: int = 10,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniformly sampled items each user has not interacted with in ``graph``.

    Rejection sampling: candidates that hit a training item are redrawn up to ``max_retries``
    times. A user who has seen (almost) every item may keep a seen item after that; with
    realistic sparsity the chance is negligible.

    Args:
        graph: the training graph.
        users: LongTensor [B].
        num_negatives: N per user.
        generator: optional ``torch.Generator`` for reproducible draws.

    Returns:
        LongTensor [B] if ``num_negatives == 1`` else [B, N].
    """
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    users = users.long()
    row_users = users.unsqueeze(1).expand(-1, num_negatives)
    negatives = torch.randint(graph.num_items, row_users.shape, device=users.device, generator=generator)
    for _ in range(max_retries):
        collision = graph.has_interaction(row_users.reshape(-1), negatives.reshape(-1)).view_as(negatives)
        if not collision.any():
            break
        redraw = torch.randint(
            graph.num_items, (int(collision.sum()),), device=users.device, generator=generator
        )
        negatives[collision] = redraw
    return negatives.squeeze(1) if num_negatives == 1 else negatives


def sample_bpr_batch(
    graph: InteractionGraph,
    batch_size: int,
    num_negatives: int = 1,
    *,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """A BPR batch: training edges drawn uniformly with replacement, plus sampled negatives.

    Returns:
        ``(users [B], pos_items [B], neg_items [B] or [B, N])``, LongTensors.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    edges = torch.randint(graph.num_interactions, (batch_size,), device=graph.device, generator=generator)
    users, pos_items = graph.user_index[edges], graph.item_index[edges]
    neg_items = sample_negatives(graph, users, num_negatives, generator=generator)
    return users, pos_items, neg_items
