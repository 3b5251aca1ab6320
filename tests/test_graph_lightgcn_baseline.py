"""PyG's own LightGCN (the benchmark baseline) runs here without torch-sparse / pyg-lib, on the
edge_index InteractionGraph exports, and plugs into evaluate_ranking through lightgcn_scorer."""

from __future__ import annotations

import pytest
import torch

from prefgraph import InteractionGraph, evaluate_ranking, lightgcn_scorer, propagate, sample_bpr_batch

LightGCN = pytest.importorskip("torch_geometric.nn.models").LightGCN


def tiny_graph() -> InteractionGraph:
    gen = torch.Generator().manual_seed(0)
    users = torch.arange(30).repeat_interleave(4)
    items = (users % 3) * 8 + torch.randint(0, 8, (120,), generator=gen)  # 3 communities of 8 items
    return InteractionGraph(users, items, 30, 24)


def test_pyg_lightgcn_trains_and_is_scored():
    graph = tiny_graph()
    edge_index = graph.bipartite_edge_index()
    torch.manual_seed(0)
    model = LightGCN(graph.num_nodes, embedding_dim=16, num_layers=2)
    # PyG's propagation equals prefgraph's (same normalisation, alpha = 1 / (K + 1))
    expected = propagate(graph.adjacency, model.embedding.weight, 2)
    torch.testing.assert_close(model.get_embedding(edge_index), expected)

    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        users, pos, neg = sample_bpr_batch(graph, 64, generator=generator)
        item_nodes = graph.num_users
        pos_rank = model(edge_index, torch.stack([users, pos + item_nodes]))
        neg_rank = model(edge_index, torch.stack([users, neg + item_nodes]))
        node_id = torch.cat([users, pos + item_nodes, neg + item_nodes])
        loss = model.recommendation_loss(pos_rank, neg_rank, node_id=node_id, lambda_reg=1e-4)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    # a held-out item from each user's own community
    test_users = torch.arange(30)
    test_items = (test_users % 3) * 8 + (test_users % 8)
    fresh = ~graph.has_interaction(test_users, test_items)
    result = evaluate_ranking(
        lightgcn_scorer(model, graph), graph, (test_users[fresh], test_items[fresh]), ks=(5,)
    )
    # 8 community items minus those seen: a trained model puts most of them in the top 5 of ~21
    assert result["recall@5"] > 0.5, result
    with pytest.raises(ValueError, match="nodes"):
        lightgcn_scorer(LightGCN(graph.num_nodes + 1, 4, 1), graph)
