"""Content preferences: a user as the (edge-weighted) mean of their history's item content vectors.

A BPR-trained user vector keeps what predicts the next click; on short, noisy histories that can
be little of what the items look like or say. The content preference keeps it by construction:
each user's vector is the mean of the content vectors (for example the principal components of
the raw item features) of the items they interacted with, weighted by the graph's edge weights
(for example from ratings, so that what a user rated low counts little).

    components = principal_components(graph.item_features["visual"], graph.item_feature_masks["visual"], 64)
    prefs = content_preferences(graph, {"visual": components})
    prefs["visual"]    # [U, 64]
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .graph import InteractionGraph
from .model import UserPreferences

__all__ = ["content_preferences", "principal_components"]


def principal_components(features: Tensor, mask: Tensor | None, dim: int) -> Tensor:
    """FloatTensor [I, dim]: the items' coordinates on the top ``dim`` principal directions of the
    present items' features (centred on their mean); rows with ``mask`` False are zeros (the mean).

    Deterministic: the directions come from the full SVD of the present rows, each with its sign
    fixed so that its largest-magnitude loading is positive.

    Args:
        features: FloatTensor [I, d_m].
        mask: BoolTensor [I], False for items without the modality; None: every item present.
        dim: output width; at most ``min(present items, d_m)``.
    """
    if features.dim() != 2:
        raise ValueError(f"features must be [I, d_m], got {tuple(features.shape)}")
    present = torch.ones(features.size(0), dtype=torch.bool) if mask is None else mask.bool()
    rows = features[present].double()
    if not 0 < dim <= min(rows.shape):
        raise ValueError(f"dim must be in [1, min(present items, feature width) = {min(rows.shape)}], got {dim}")
    mean = rows.mean(0)
    _, _, vh = torch.linalg.svd(rows - mean, full_matrices=False)
    directions = vh[:dim]
    signs = torch.sign(directions.gather(1, directions.abs().argmax(1, keepdim=True)))
    directions = directions * signs
    out = torch.zeros(features.size(0), dim, dtype=torch.float64)
    out[present] = (rows - mean) @ directions.T
    return out.float()


def content_preferences(
    graph: InteractionGraph,
    item_vectors: Mapping[str, Tensor],
    cold_start_history: tuple[Tensor, Tensor] | None = None,
) -> UserPreferences:
    """Per-modality user vectors: the weighted mean of ``item_vectors`` over each user's training edges.

    Weights are ``graph.edge_weight`` (1 for a binary graph). A warm user whose every weight is 0
    gets the plain mean of their items. Cold-start users (no training edge) get the plain mean
    over their items in ``cold_start_history``, or, with none, the population prior (the mean of
    the warm users' vectors): the same rule as :meth:`ModalSpecificGNN.user_preferences`.

    Args:
        graph: the training graph.
        item_vectors: ``{modality: FloatTensor [I, k_m]}``.
        cold_start_history: optional ``(user_index [P], item_index [P])``; pairs of warm users are ignored.

    Returns:
        :class:`UserPreferences` with ``embeddings[m]`` [U, k_m].
    """
    users, items = graph.user_index, graph.item_index
    weight = torch.ones(users.numel()) if graph.edge_weight is None else graph.edge_weight
    total = torch.zeros(graph.num_users).index_add_(0, users, weight)
    unweighted = total[users] == 0  # users whose every weight is 0 count their items alike
    weight = torch.where(unweighted, torch.ones_like(weight), weight)
    total = torch.zeros(graph.num_users).index_add_(0, users, weight)
    cold = graph.cold_start_users
    history_count = torch.zeros(graph.num_users)
    if cold_start_history is not None:
        hist_users, hist_items = (t.long().reshape(-1) for t in cold_start_history)
        keep = cold[hist_users]
        hist_users, hist_items = hist_users[keep], hist_items[keep]
        history_count.index_add_(0, hist_users, torch.ones(hist_users.numel()))
    from_history = cold & (history_count > 0)
    from_prior = cold & (history_count == 0)
    preferences: dict[str, Tensor] = {}
    for modality, vectors in item_vectors.items():
        if vectors.dim() != 2 or vectors.size(0) != graph.num_items:
            raise ValueError(f"item_vectors[{modality!r}] must be [I={graph.num_items}, k], got {tuple(vectors.shape)}")
        vectors = vectors.float()
        summed = torch.zeros(graph.num_users, vectors.size(1)).index_add_(0, users, vectors[items] * weight[:, None])
        out = summed / total.clamp_min(1e-12)[:, None]
        out = torch.where(from_prior[:, None], out[~cold].mean(0), out)
        if from_history.any():
            folded = torch.zeros_like(out).index_add_(0, hist_users, vectors[hist_items])
            out = torch.where(from_history[:, None], folded / history_count.clamp_min(1)[:, None], out)
        preferences[modality] = out
    return UserPreferences(embeddings=preferences, cold_start=cold.clone(), from_prior=from_prior)
