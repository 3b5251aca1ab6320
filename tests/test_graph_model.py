"""ModalSpecificGNN: propagation vs dense reference, shapes, missing modalities, scoring, losses,
recommendation, cold-start preferences."""

from __future__ import annotations

import pytest
import torch

from prefgraph import (
    BipartiteAdjacency,
    InteractionGraph,
    LossTerms,
    ModalEmbeddings,
    ModalSpecificGNN,
    bpr_loss,
    info_nce_loss,
    l2_regularization,
    modality_dropout_mask,
    propagate,
    sample_bpr_batch,
    sample_negatives,
)
from prefgraph.model import _CountWeightedSquares, _GatheredScores
from prefgraph.propagation import COLUMN_BLOCK

NUM_USERS, NUM_ITEMS, DIM = 6, 7, 4


def make_graph(seed: int = 0, visual_missing=(2,), textual_missing=(5,)) -> InteractionGraph:
    gen = torch.Generator().manual_seed(seed)
    users = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3, 4, 4])  # user 5 is cold start
    items = torch.tensor([0, 1, 1, 2, 3, 4, 0, 5, 6, 2])
    visual = torch.randn(NUM_ITEMS, 3, generator=gen)
    textual = torch.randn(NUM_ITEMS, 5, generator=gen)
    visual_mask = torch.ones(NUM_ITEMS, dtype=torch.bool)
    visual_mask[list(visual_missing)] = False
    textual_mask = torch.ones(NUM_ITEMS, dtype=torch.bool)
    textual_mask[list(textual_missing)] = False
    return InteractionGraph(
        users,
        items,
        NUM_USERS,
        NUM_ITEMS,
        item_features={"visual": visual, "textual": textual},
        item_feature_masks={"visual": visual_mask, "textual": textual_mask},
    )


def make_model(**kwargs) -> ModalSpecificGNN:
    torch.manual_seed(0)
    kwargs = {"feature_dims": {"visual": 3, "textual": 5}, **kwargs}
    return ModalSpecificGNN(NUM_USERS, NUM_ITEMS, DIM, 2, **kwargs)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_propagate_equals_dense_reference():
    graph = make_graph()
    x = torch.randn(graph.num_nodes, 5)
    dense = graph.adjacency.to_dense()
    expected = (x + dense @ x + dense @ dense @ x + dense @ dense @ dense @ x) / 4
    torch.testing.assert_close(propagate(graph.adjacency, x, 3), expected)
    torch.testing.assert_close(propagate(dense, x, 3), expected)
    torch.testing.assert_close(propagate(graph.adjacency.to_sparse_csr(), x, 3), expected)
    torch.testing.assert_close(propagate(graph.adjacency_blocks, x, 3), expected)
    assert torch.equal(propagate(graph.adjacency, x, 0), x)
    assert torch.equal(propagate(graph.adjacency_blocks, x, 0), x)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_adjacency_blocks_are_the_off_diagonal_blocks_of_the_adjacency():
    graph = make_graph()
    dense = graph.adjacency.to_dense()
    blocks = graph.adjacency_blocks
    assert isinstance(blocks, BipartiteAdjacency) and blocks is graph.adjacency_blocks  # cached
    assert blocks.user_item.layout == blocks.item_user.layout == torch.sparse_csr
    assert torch.equal(blocks.user_item.to_dense(), dense[:NUM_USERS, NUM_USERS:])
    assert torch.equal(blocks.item_user.to_dense(), dense[NUM_USERS:, :NUM_USERS])
    assert not dense[:NUM_USERS, :NUM_USERS].any() and not dense[NUM_USERS:, NUM_USERS:].any()
    weighted = InteractionGraph(graph.user_index, graph.item_index, NUM_USERS, NUM_ITEMS,
                                edge_weight=torch.arange(1.0, graph.num_interactions + 1))
    assert torch.equal(weighted.adjacency_blocks.user_item.to_dense(), weighted.adjacency.to_dense()[:NUM_USERS, NUM_USERS:])


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("tile_rows", [1, 2, 3, 100])
def test_column_tiles_hold_the_blocks_and_propagate_alike(tile_rows: int):
    """Tiles of 1-3 columns cut every block into several (the last one short); 100 keeps one."""
    graph = make_graph()
    blocks = graph.adjacency_blocks
    tiled = BipartiteAdjacency(blocks.user_item, blocks.item_user, tile_rows=tile_rows)
    assert len(tiled.item_user_tiles) == -(-NUM_USERS // tile_rows)
    assert len(tiled.user_item_tiles) == -(-NUM_ITEMS // tile_rows)
    assert sum(t._nnz() for _, t in tiled.item_user_tiles) == graph.num_interactions
    assert torch.equal(tiled.user_item.to_dense(), blocks.user_item.to_dense())
    assert torch.equal(tiled.item_user.to_dense(), blocks.item_user.to_dense())
    x = torch.randn(graph.num_nodes, COLUMN_BLOCK + 3, requires_grad=True)
    upstream = torch.randn(graph.num_nodes, COLUMN_BLOCK + 3)
    expected = propagate(graph.adjacency, x, 3)
    (expected_grad,) = torch.autograd.grad(expected, x, upstream)
    out = propagate(tiled, x, 3)
    (grad,) = torch.autograd.grad(out, x, upstream)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad, expected_grad)
    with pytest.raises(ValueError, match="tile_rows"):
        BipartiteAdjacency(blocks.user_item, blocks.item_user, tile_rows=0)


@pytest.mark.parametrize("layout", ["coo", "csr", "blocks"])
@pytest.mark.parametrize("width", [5, COLUMN_BLOCK * 2 + 3])  # one column block, and three (the last one short)
def test_symmetric_propagation_has_the_autograd_values_and_gradients(layout: str, width: int):
    """``symmetric=True`` (implied for :class:`BipartiteAdjacency`) back-propagates by propagating
    the gradient (the operator is its own transpose): the same outputs and input gradients as
    autograd through every sparse product."""
    graph = make_graph()
    adjacency = {"coo": graph.adjacency, "csr": graph.adjacency_csr, "blocks": graph.adjacency_blocks}[layout]
    x = torch.randn(graph.num_nodes, width, requires_grad=True)
    upstream = torch.randn(graph.num_nodes, width)
    expected = propagate(graph.adjacency, x, 3)
    (expected_grad,) = torch.autograd.grad(expected, x, upstream)
    out = propagate(adjacency, x, 3, symmetric=True)
    (grad,) = torch.autograd.grad(out, x, upstream)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad, expected_grad)
    assert graph.adjacency_csr.layout == torch.sparse_csr
    torch.testing.assert_close(graph.adjacency_csr.to_dense(), graph.adjacency.to_dense())


@pytest.mark.parametrize("negatives", [1, 3])
def test_loss_from_the_stacked_rows_equals_the_per_modality_tables(negatives: int):
    """The forward's stacked tensors (one gather per batch) and hand-assembled per-modality
    tables (the fallback) give the same loss terms and the same gradients."""
    graph = make_graph()
    model = make_model(modality_dropout=0.0, id_l2_weight=1e-2)
    users, pos, neg = sample_bpr_batch(graph, 16, negatives, generator=torch.Generator().manual_seed(0))
    emb = model(graph)
    assert emb.stacked is not None and emb.stacked_ego is not None
    by_hand = ModalEmbeddings(emb.users, emb.items, emb.user_ego, emb.item_ego)
    stacked_terms = model.loss_terms(emb, users, pos, neg)
    table_terms = model.loss_terms(by_hand, users, pos, neg)
    for name in ("total", "bpr", "l2", "contrastive"):
        torch.testing.assert_close(getattr(stacked_terms, name), getattr(table_terms, name))
    params = [p for p in model.parameters() if p.requires_grad]
    stacked_grads = torch.autograd.grad(stacked_terms.total, params, retain_graph=True)
    table_grads = torch.autograd.grad(table_terms.total, params)
    for a, b in zip(stacked_grads, table_grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("negatives", [1, 3])
def test_training_step_equals_per_modality_dense_autograd(negatives: int):
    """The model's loss and parameter gradients (block products, the symmetric backward, the
    count-weighted L2) equal those of the plain formulation: each modality's layer-0 rows
    propagated through the dense adjacency with autograd, scored and penalised row by row."""
    graph = make_graph()
    model = make_model(modality_dropout=0.0, id_l2_weight=1e-2)
    users, pos, neg = sample_bpr_batch(graph, 16, negatives, generator=torch.Generator().manual_seed(2))
    params = [p for p in model.parameters() if p.requires_grad]
    terms = model.loss_terms(model(graph), users, pos, neg)
    grads = torch.autograd.grad(terms.total, params)

    dense = graph.adjacency.to_dense()
    user_ego = {m: model.user_embeddings[m].weight for m in model.modalities}
    item_ego = model.item_ego_embeddings(graph)
    users_out, items_out = {}, {}
    for m in model.modalities:
        x0 = torch.cat([user_ego[m], item_ego[m]])
        users_out[m], items_out[m] = ((x0 + dense @ x0 + dense @ (dense @ x0)) / 3).split([NUM_USERS, NUM_ITEMS])
    reference = model.loss_terms(ModalEmbeddings(users_out, items_out, user_ego, item_ego), users, pos, neg)
    for name in ("total", "bpr", "l2"):
        torch.testing.assert_close(getattr(terms, name), getattr(reference, name))
    for a, b in zip(grads, torch.autograd.grad(reference.total, params), strict=True):
        torch.testing.assert_close(a, b)


def test_forward_shapes_and_per_modality_dense_propagation():
    graph = make_graph()
    model = make_model()
    emb = model(graph)
    assert isinstance(emb, ModalEmbeddings)
    assert model.modalities == emb.modalities == ("id", "visual", "textual")
    dense = graph.adjacency.to_dense()
    for m in model.modalities:
        assert emb.users[m].shape == (NUM_USERS, DIM) and emb.items[m].shape == (NUM_ITEMS, DIM)
        # each modality propagates on its own: a dense LightGCN over that modality's ego rows only
        x0 = torch.cat([emb.user_ego[m], emb.item_ego[m]])
        expected = (x0 + dense @ x0 + dense @ dense @ x0) / 3
        torch.testing.assert_close(torch.cat([emb.users[m], emb.items[m]]), expected)


def test_missing_modality_uses_learned_vector_and_ignores_features():
    graph = make_graph()
    model = make_model()
    ego = model.item_ego_embeddings(graph)
    torch.testing.assert_close(ego["visual"][2], model.missing_item_embeddings["visual"])
    torch.testing.assert_close(ego["textual"][5], model.missing_item_embeddings["textual"])
    assert not torch.allclose(ego["visual"][5], model.missing_item_embeddings["visual"])
    # garbage in a missing row must not change anything
    poisoned = make_graph()
    poisoned.item_features["visual"][2] = 1e6
    torch.testing.assert_close(model.item_ego_embeddings(poisoned)["visual"], ego["visual"])
    # and the missing vector is trained: it gets a gradient when item 2 is in the batch
    emb = model(graph)
    model.loss(emb, torch.tensor([1]), torch.tensor([2]), torch.tensor([4])).backward()
    assert model.missing_item_embeddings["visual"].grad.abs().sum() > 0


def test_score_is_softmax_weighted_sum_of_modal_dot_products():
    graph = make_graph()
    model = make_model()
    with torch.no_grad():
        model.modality_logits.copy_(torch.tensor([0.5, -1.0, 2.0]))
    emb = model(graph)
    users, items = torch.tensor([0, 3, 5]), torch.tensor([6, 0, 2])
    weights = torch.softmax(torch.tensor([0.5, -1.0, 2.0]), 0)
    expected = sum(
        w * (emb.users[m][users] * emb.items[m][items]).sum(1)
        for w, m in zip(weights, model.modalities, strict=True)
    )
    torch.testing.assert_close(model.score(emb, users, items), expected)
    all_scores = model.score_all(emb, users)
    assert all_scores.shape == (3, NUM_ITEMS)
    torch.testing.assert_close(all_scores[torch.arange(3), items], expected)
    # a modality mask keeping only "textual" gives that modality's plain dot product
    only_text = torch.tensor([[False, False, True]]).expand(3, -1)
    torch.testing.assert_close(
        model.score(emb, users, items, only_text),
        (emb.users["textual"][users] * emb.items["textual"][items]).sum(1),
    )


def test_loss_terms_backward_reaches_every_parameter():
    graph = make_graph()
    model = make_model(contrastive_weight=0.1, modality_dropout=0.3)
    users, pos, neg = sample_bpr_batch(graph, 16, num_negatives=3, generator=torch.Generator().manual_seed(1))
    assert neg.shape == (16, 3)
    terms = model.loss_terms(model(graph), users, pos, neg)
    assert isinstance(terms, LossTerms)
    assert torch.isfinite(terms.total) and terms.contrastive > 0 and terms.l2 > 0
    torch.testing.assert_close(terms.total, terms.bpr + 1e-4 * terms.l2 + 0.1 * terms.contrastive)
    terms.total.backward()
    for name, p in model.named_parameters():
        if name.startswith("missing_item_embeddings"):
            continue  # only reached when a batch contains an item that lacks the modality
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_id_l2_weight_penalises_only_the_id_modality():
    graph = make_graph()
    users, pos, neg = sample_bpr_batch(graph, 16, generator=torch.Generator().manual_seed(2))
    same = make_model(l2_weight=1e-3)
    strong = make_model(l2_weight=1e-3, id_l2_weight=0.5)
    emb = same(graph)
    id_rows = (emb.user_ego["id"][users], emb.item_ego["id"][pos], emb.item_ego["id"][neg])
    id_term = l2_regularization(*id_rows, batch_size=16)
    base, heavy = same.loss_terms(emb, users, pos, neg), strong.loss_terms(emb, users, pos, neg)
    torch.testing.assert_close(heavy.l2, base.l2)  # the logged term stays unweighted
    torch.testing.assert_close(heavy.total - base.total, (0.5 - 1e-3) * id_term)
    assert strong.get_config()["id_l2_weight"] == 0.5 and ModalSpecificGNN(**strong.get_config()).id_l2_weight == 0.5


def test_modality_dropout_only_in_training_mode():
    graph = make_graph()
    model = make_model(modality_dropout=0.5)
    users, pos, neg = torch.tensor([0, 1, 2, 4]), torch.tensor([0, 1, 3, 6]), torch.tensor([6, 5, 1, 0])
    emb = model(graph)
    model.eval()
    assert model.loss(emb, users, pos, neg) == model.loss(emb, users, pos, neg)
    model.train()
    torch.manual_seed(3)
    losses = {round(model.loss(emb, users, pos, neg).item(), 6) for _ in range(10)}
    assert len(losses) > 1  # random modality subsets change the score


def test_modality_dropout_mask_never_empty():
    mask = modality_dropout_mask(500, 3, 0.9, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (500, 3) and mask.any(dim=1).all()
    assert 0.05 < mask.float().mean() < 0.5  # actually drops most entries


def test_loss_functions_by_hand():
    pos, neg = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    expected = -(torch.sigmoid(torch.tensor(2.0)).log() + torch.sigmoid(torch.tensor(-1.0)).log()) / 2
    torch.testing.assert_close(bpr_loss(pos, neg), expected)
    torch.testing.assert_close(bpr_loss(pos, neg.unsqueeze(1).expand(-1, 4)), expected)
    a, b = torch.ones(2, 3), 2 * torch.ones(2, 3)
    torch.testing.assert_close(l2_regularization(a, b, batch_size=2), torch.tensor(0.5 * (6 + 24) / 2))
    q = torch.eye(4)
    assert info_nce_loss(q, q, 0.05) < 0.01  # perfectly aligned, orthogonal negatives
    assert info_nce_loss(q, q.roll(1, 0), 0.05) > 10


def test_recommend_excludes_seen_and_is_sorted():
    graph = make_graph()
    model = make_model()
    top = model.recommend(graph, torch.tensor([0, 2]), k=3)
    assert top.shape == (2, 3)
    assert not set(top[0].tolist()) & {0, 1}
    assert not set(top[1].tolist()) & {0, 3, 4}
    emb = model(graph)
    scores = model.score_all(emb, torch.tensor([0]))[0]
    assert scores[top[0]].tolist() == sorted(scores[top[0]].tolist(), reverse=True)
    with_seen = model.recommend(graph, torch.tensor([0]), k=NUM_ITEMS, exclude_seen=False)
    assert sorted(with_seen[0].tolist()) == list(range(NUM_ITEMS))
    with pytest.raises(ValueError, match="k must be"):
        model.recommend(graph, torch.tensor([0]), k=NUM_ITEMS + 1)


def test_cold_start_users_get_flagged_preferences():
    graph = make_graph()
    model = make_model()
    emb = model(graph)
    prefs = model.user_preferences(graph, emb)
    assert prefs.cold_start.tolist() == [False] * 5 + [True]
    assert prefs.from_prior.tolist() == [False] * 5 + [True]
    for m in model.modalities:
        assert prefs[m].shape == (NUM_USERS, DIM)
        torch.testing.assert_close(prefs[m][5], emb.users[m][:5].mean(0))  # population prior
        torch.testing.assert_close(prefs[m][:5], emb.users[m][:5])  # warm users untouched
    # with a few post-training items the cold user is folded in from them (warm users' pairs ignored)
    history = (torch.tensor([5, 5, 0]), torch.tensor([3, 6, 4]))
    prefs = model.user_preferences(graph, emb, cold_start_history=history)
    assert prefs.cold_start[5] and not prefs.from_prior[5]
    for m in model.modalities:
        torch.testing.assert_close(prefs[m][5], emb.items[m][[3, 6]].mean(0))
        torch.testing.assert_close(prefs[m][0], emb.users[m][0])
    # recommendations for the cold user follow the fold-in and skip its history items
    top = model.recommend(graph, torch.tensor([5]), k=NUM_ITEMS - 2, cold_start_history=history)
    assert not set(top[0].tolist()) & {3, 6}


def test_model_rejects_mismatched_graph_and_bad_config():
    graph = make_graph()
    with pytest.raises(ValueError, match="built for"):
        ModalSpecificGNN(NUM_USERS + 1, NUM_ITEMS, DIM, 1, feature_dims={"visual": 3, "textual": 5})(graph)
    with pytest.raises(ValueError, match="has dim 5, the model expects 4"):
        ModalSpecificGNN(NUM_USERS, NUM_ITEMS, DIM, 1, feature_dims={"visual": 3, "textual": 4})(graph)
    with pytest.raises(ValueError, match="expects item features 'audio'"):
        ModalSpecificGNN(NUM_USERS, NUM_ITEMS, DIM, 1, feature_dims={"audio": 3})(graph)
    with pytest.raises(ValueError, match="reserved"):
        ModalSpecificGNN(NUM_USERS, NUM_ITEMS, DIM, 1, feature_dims={"id": 3})
    with pytest.raises(ValueError, match="no modality"):
        ModalSpecificGNN(NUM_USERS, NUM_ITEMS, DIM, 1, use_id_modality=False)
    model = make_model()
    with pytest.raises(ValueError, match="expected users"):
        model.loss(model(graph), torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([1, 2]))


def test_config_round_trip_and_state_dict():
    model = make_model(projection_hidden_dim=8, modality_dropout=0.2)
    clone = ModalSpecificGNN(**model.get_config())
    clone.load_state_dict(model.state_dict())
    graph = make_graph()
    torch.testing.assert_close(clone(graph).users["visual"], model(graph).users["visual"])


def test_negative_sampling_avoids_seen_items():
    graph = make_graph()
    users = torch.arange(5).repeat_interleave(40)
    negatives = sample_negatives(graph, users, 2, generator=torch.Generator().manual_seed(0))
    assert negatives.shape == (200, 2)
    flat_users = users.unsqueeze(1).expand(-1, 2).reshape(-1)
    assert not graph.has_interaction(flat_users, negatives.reshape(-1)).any()


def test_count_weighted_squares_has_the_autograd_gradient():
    """The L2 term's hand-written backward (two passes) against gradcheck, with repeated and absent rows."""
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    counts = torch.tensor([0.0, 1, 3, 0, 2, 1, 5], dtype=torch.float64)
    torch.testing.assert_close(_CountWeightedSquares.apply(x, counts), counts @ x.detach().square())
    assert torch.autograd.gradcheck(lambda t: _CountWeightedSquares.apply(t, counts), (x,))


@pytest.mark.parametrize("negatives", [1, 3])
def test_gathered_scores_have_the_autograd_values_and_gradient(negatives: int):
    """The batch scores' hand-written backward against gradcheck and the plain gather-and-multiply,
    with a user, a positive and a negative repeated in the batch (their gradients add up)."""
    m, d, batch = 2, 3, 4
    table = torch.randn(9, m * d, dtype=torch.float64, requires_grad=True)
    users, positives = torch.tensor([0, 1, 1, 3]), torch.tensor([5, 6, 5, 8])
    negatives_ = torch.tensor([[6, 7, 8], [4, 4, 8], [7, 5, 6], [8, 6, 4]])[:, :negatives]
    nodes = torch.cat([users, positives, negatives_.reshape(-1)])
    pos, neg = _GatheredScores.apply(table, nodes, batch, m)
    rows = table.view(-1, m, d)
    torch.testing.assert_close(pos, (rows[users] * rows[positives]).sum(-1))
    torch.testing.assert_close(neg, (rows[users].unsqueeze(1) * rows[negatives_]).sum(-1))
    assert pos.shape == (batch, m) and neg.shape == (batch, negatives, m)
    assert torch.autograd.gradcheck(lambda t: _GatheredScores.apply(t, nodes, batch, m), (table,))
