"""InteractionGraph: normalised adjacency, degrees, seen-item CSR, feature masks, validation."""

from __future__ import annotations

import pytest
import torch

from prefgraph import InteractionGraph, normalized_bipartite_adjacency

# 4 users, 5 items; user 3 has no interaction (cold start); item 4 is never interacted with.
USERS = torch.tensor([0, 0, 1, 1, 1, 2, 0])
ITEMS = torch.tensor([0, 2, 1, 2, 3, 0, 2])  # (0, 2) is duplicated on purpose


def dense_normalized(user_index, item_index, num_users, num_items):
    n = num_users + num_items
    a = torch.zeros(n, n)
    a[user_index, item_index + num_users] = 1.0
    a[item_index + num_users, user_index] = 1.0
    deg = a.sum(1)
    inv = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    return inv[:, None] * a * inv[None, :]


def test_adjacency_matches_dense_symmetric_normalisation():
    graph = InteractionGraph(USERS, ITEMS, 4, 5)
    expected = dense_normalized(USERS, ITEMS, 4, 5)
    adjacency = graph.adjacency
    assert adjacency.is_sparse and adjacency.shape == (9, 9)
    torch.testing.assert_close(adjacency.to_dense(), expected)
    assert graph.adjacency is adjacency  # cached, not rebuilt
    # a value checked by hand: user 1 (degree 3) -- item 2 (degree 2: users 0 and 1)
    assert adjacency.to_dense()[1, 4 + 2].item() == pytest.approx(1 / (3**0.5 * 2**0.5))
    torch.testing.assert_close(normalized_bipartite_adjacency(USERS, ITEMS, 4, 5).to_dense(), expected)


def test_weighted_adjacency_matches_dense_weighted_normalisation():
    # the duplicate (0, 2) keeps its larger weight; user 2's only edge weighs 0, so user 2 is isolated
    weights = torch.tensor([1.0, 0.5, 2.0, 3.0, 1.0, 0.0, 1.5])
    graph = InteractionGraph(USERS, ITEMS, 4, 5, edge_weight=weights)
    n = 9
    a = torch.zeros(n, n)
    for u, i, w in zip(USERS.tolist(), ITEMS.tolist(), weights.tolist(), strict=True):
        a[u, 4 + i] = a[4 + i, u] = max(w, a[u, 4 + i].item())
    deg = a.sum(1)
    inv = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    expected = inv[:, None] * a * inv[None, :]
    torch.testing.assert_close(graph.adjacency.to_dense(), expected)
    assert graph.edge_weight.tolist() == [1.0, 1.5, 2.0, 3.0, 1.0, 0.0]  # sorted by (user, item), max of (0, 2)
    assert graph.adjacency.to_dense()[2].abs().sum() == 0
    assert graph.user_degree.tolist() == [2, 3, 1, 0]  # degrees still count edges
    # all-ones weights are the binary graph, value for value
    ones = InteractionGraph(USERS, ITEMS, 4, 5, edge_weight=torch.ones(7))
    assert torch.equal(ones.adjacency.to_dense(), InteractionGraph(USERS, ITEMS, 4, 5).adjacency.to_dense())
    assert torch.equal(graph.to("cpu").adjacency.to_dense(), graph.adjacency.to_dense())


@pytest.mark.parametrize("weights, message", [
    (torch.ones(6), "7 weights"),
    (torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0]), ">= 0"),
    (torch.tensor([1.0, float("nan"), 1.0, 1.0, 1.0, 1.0, 1.0]), "finite"),
])
def test_bad_edge_weights_are_refused(weights, message):
    with pytest.raises(ValueError, match=message):
        InteractionGraph(USERS, ITEMS, 4, 5, edge_weight=weights)


def test_degrees_dedup_and_cold_start():
    graph = InteractionGraph(USERS, ITEMS, 4, 5)
    assert graph.num_interactions == 6  # the duplicate (0, 2) is merged
    assert graph.num_nodes == 9
    assert graph.user_degree.tolist() == [2, 3, 1, 0]
    assert graph.item_degree.tolist() == [2, 1, 2, 1, 0]
    assert graph.cold_start_users.tolist() == [False, False, False, True]
    assert graph.bipartite_edge_index().shape == (2, 12)


def test_seen_items_csr_and_mask():
    graph = InteractionGraph(USERS, ITEMS, 4, 5)
    assert graph.seen_items(1).tolist() == [1, 2, 3]
    assert graph.seen_items(3).tolist() == []
    mask = graph.seen_mask(torch.tensor([1, 3, 0, 1]))
    expected = torch.zeros(4, 5, dtype=torch.bool)
    expected[0, [1, 2, 3]] = True
    expected[2, [0, 2]] = True
    expected[3, [1, 2, 3]] = True
    assert torch.equal(mask, expected)
    assert graph.has_interaction(torch.tensor([0, 0, 3, 2]), torch.tensor([2, 1, 0, 0])).tolist() == [
        True,
        False,
        False,
        True,
    ]


def test_feature_masks_explicit_and_from_nan_rows():
    visual = torch.randn(5, 3)
    visual[1] = float("nan")  # item 1 has no image
    textual = torch.randn(5, 2)
    text_mask = torch.tensor([True, True, False, True, True])
    graph = InteractionGraph(
        USERS,
        ITEMS,
        4,
        5,
        item_features={"visual": visual, "textual": textual},
        item_feature_masks={"textual": text_mask},
    )
    assert graph.modalities == ("visual", "textual")
    assert graph.item_feature_masks["visual"].tolist() == [True, False, True, True, True]
    assert torch.equal(graph.item_feature_masks["textual"], text_mask)
    # missing rows are zeroed so that NaN can never reach a projection
    assert torch.isfinite(graph.item_features["visual"]).all()
    assert graph.item_features["visual"][1].abs().sum() == 0
    assert graph.item_features["textual"][2].abs().sum() == 0
    torch.testing.assert_close(graph.item_features["visual"][0], visual[0])


def test_hetero_data_round_trip():
    visual = torch.randn(5, 3)
    graph = InteractionGraph(USERS, ITEMS, 4, 5, item_features={"visual": visual})
    data = graph.to_hetero_data()
    assert data["user"].num_nodes == 4 and data["item"].num_nodes == 5
    assert data["user", "interacts", "item"].edge_index.shape == (2, 6)
    back = InteractionGraph.from_hetero_data(data)
    assert back.num_users == 4 and back.num_items == 5
    assert torch.equal(back.user_index, graph.user_index) and torch.equal(back.item_index, graph.item_index)
    torch.testing.assert_close(back.item_features["visual"], visual)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(user_index=torch.tensor([0, 4]), item_index=torch.tensor([0, 1])), "user_index contains id 4"),
        (
            dict(user_index=torch.tensor([0, -1]), item_index=torch.tensor([0, 1])),
            "user_index contains id -1",
        ),
        (dict(user_index=torch.tensor([0, 1]), item_index=torch.tensor([0, 5])), "item_index contains id 5"),
        (dict(user_index=torch.tensor([0, 1]), item_index=torch.tensor([0])), "same length"),
        (
            dict(
                user_index=torch.tensor([], dtype=torch.long), item_index=torch.tensor([], dtype=torch.long)
            ),
            "empty graph",
        ),
        (dict(user_index=torch.tensor([0.0]), item_index=torch.tensor([0])), "integer ids"),
        (dict(item_features={"visual": torch.randn(4, 3)}), "has 4 rows but num_items=5"),
        (dict(item_features={"visual": torch.randn(5)}), "must be a 2-D tensor"),
        (
            dict(
                item_features={"visual": torch.randn(5, 3)},
                item_feature_masks={"visual": torch.ones(4, dtype=torch.bool)},
            ),
            "BoolTensor of shape",
        ),
        (dict(item_feature_masks={"visual": torch.ones(5, dtype=torch.bool)}), "without features"),
        (
            dict(
                item_features={"visual": torch.full((5, 3), float("nan"))},
                item_feature_masks={"visual": torch.ones(5, dtype=torch.bool)},
            ),
            "non-finite values on item 0",
        ),
    ],
)
def test_bad_input_raises_clear_errors(kwargs, message):
    args = dict(user_index=USERS, item_index=ITEMS, num_users=4, num_items=5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        InteractionGraph(**args)


def test_nonpositive_sizes_raise():
    with pytest.raises(ValueError, match="must be positive"):
        InteractionGraph(USERS, ITEMS, 0, 5)
