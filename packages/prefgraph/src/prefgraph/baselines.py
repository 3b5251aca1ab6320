"""Scorers for the baselines a benchmark compares against, in :func:`prefgraph.evaluate_ranking`'s format."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .graph import InteractionGraph
from .metrics import Scorer

if TYPE_CHECKING:
    from torch_geometric.nn.models import LightGCN

__all__ = ["popularity_scorer", "lightgcn_scorer"]


def popularity_scorer(graph: InteractionGraph) -> Scorer:
    """Scores every item by its training degree, the same for all users: ``users [B] -> [B, I]``."""
    popularity = graph.item_degree.float()
    return lambda users: popularity.expand(users.numel(), -1)


@torch.no_grad()
def lightgcn_scorer(model: LightGCN, graph: InteractionGraph) -> Scorer:
    """Wrap a trained ``torch_geometric.nn.models.LightGCN`` over ``graph.num_nodes`` nodes.

    The model must have been trained on ``graph.bipartite_edge_index()`` (users are nodes
    ``0..U-1``, item ``i`` is node ``U + i``). Embeddings are computed once here.

    Returns:
        ``users [B] -> scores [B, I]`` (dot products of final LightGCN embeddings).
    """
    if model.num_nodes != graph.num_nodes:
        raise ValueError(f"LightGCN has {model.num_nodes} nodes but the graph has U + I = {graph.num_nodes}")
    embedding: Tensor = model.get_embedding(graph.bipartite_edge_index())
    user_embedding, item_embedding = embedding[: graph.num_users], embedding[graph.num_users :]
    return lambda users: user_embedding[users] @ item_embedding.t()
