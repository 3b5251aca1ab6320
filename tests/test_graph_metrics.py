"""Ranking metrics against hand-computed cases, seen-item masking, batching, input formats."""

from __future__ import annotations

import math

import pytest
import torch

from prefgraph import (
    InteractionGraph,
    ModalSpecificGNN,
    evaluate_ranking,
    hit_rate_at_k,
    ndcg_at_k,
    popularity_scorer,
    recall_at_k,
    topk_items,
)

LOG2 = math.log2


def test_per_user_metrics_by_hand():
    topk = torch.tensor([[0, 1, 2, 3, 4], [3, 2, 1, 0, 4]])
    relevant = torch.zeros(2, 6, dtype=torch.bool)
    relevant[0, [1, 4]] = True  # user 0: hits at ranks 2 and 5
    relevant[1, 5] = True  # user 1: its only relevant item is not ranked
    recall3, recall5 = recall_at_k(topk, relevant, 3), recall_at_k(topk, relevant, 5)
    assert recall3.tolist() == [0.5, 0.0] and recall5.tolist() == [1.0, 0.0]
    idcg2 = 1 + 1 / LOG2(3)
    assert ndcg_at_k(topk, relevant, 3)[0].item() == pytest.approx((1 / LOG2(3)) / idcg2)
    assert ndcg_at_k(topk, relevant, 5)[0].item() == pytest.approx((1 / LOG2(3) + 1 / LOG2(6)) / idcg2)
    assert ndcg_at_k(topk, relevant, 1)[0].item() == 0.0
    assert ndcg_at_k(topk, relevant, 5)[1].item() == 0.0
    assert hit_rate_at_k(topk, relevant, 1).tolist() == [0.0, 0.0]
    assert hit_rate_at_k(topk, relevant, 2).tolist() == [1.0, 0.0]
    # ideal DCG is capped at k relevant items: 3 relevant, k = 2, both top slots hit -> NDCG 1
    many = torch.zeros(1, 6, dtype=torch.bool)
    many[0, [0, 1, 2]] = True
    assert ndcg_at_k(topk[:1], many, 2).item() == pytest.approx(1.0)
    assert recall_at_k(topk[:1], many, 2).item() == pytest.approx(2 / 3)


def test_users_without_relevant_items_are_nan_and_bad_k_raises():
    topk = torch.tensor([[0, 1]])
    nothing = torch.zeros(1, 3, dtype=torch.bool)
    assert math.isnan(recall_at_k(topk, nothing, 2).item())
    assert math.isnan(ndcg_at_k(topk, nothing, 2).item())
    assert math.isnan(hit_rate_at_k(topk, nothing, 2).item())
    with pytest.raises(ValueError, match="k=3 but only 2"):
        recall_at_k(topk, nothing, 3)


def test_topk_items_masks_excluded():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0]])
    exclude = torch.tensor([[True, False, True, False]])
    assert topk_items(scores, 2, exclude).tolist() == [[1, 3]]
    assert topk_items(scores, 2).tolist() == [[0, 1]]


def small_case():
    # 3 users, 6 items. Training: user 0 saw item 0, user 1 saw items 0 and 1, user 2 saw item 2.
    train = InteractionGraph(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 1, 2]), 3, 6)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]).expand(3, -1).clone()
    test = (torch.tensor([0, 0, 1]), torch.tensor([1, 4, 5]))  # user 2 has no test item
    return train, scores, test


def test_evaluate_ranking_masks_seen_items_by_hand():
    train, scores, test = small_case()
    result = evaluate_ranking(scores, train, test, ks=(3, 5))
    assert result["num_users"] == 2
    # user 0 after masking item 0: ranking 1,2,3,4,5 -> relevant {1, 4} at ranks 1 and 4
    # user 1 after masking items 0,1: ranking 2,3,4,5 -> relevant {5} at rank 4
    idcg2 = 1 + 1 / LOG2(3)
    assert result["recall@3"] == pytest.approx((0.5 + 0.0) / 2)
    assert result["recall@5"] == pytest.approx((1.0 + 1.0) / 2)
    assert result["ndcg@3"] == pytest.approx((1 / idcg2 + 0.0) / 2)
    assert result["ndcg@5"] == pytest.approx(((1 + 1 / LOG2(5)) / idcg2 + 1 / LOG2(5)) / 2)
    assert result["hit_rate@3"] == pytest.approx(0.5)
    # without masking, the seen items occupy the top ranks
    unmasked = evaluate_ranking(scores, train, test, ks=(3,), exclude_seen=False)
    assert unmasked["recall@3"] == pytest.approx((0.5 + 0.0) / 2)
    assert unmasked["ndcg@3"] == pytest.approx(((1 / LOG2(3)) / idcg2) / 2)


def test_evaluate_ranking_input_formats_and_batching_agree():
    train, scores, test = small_case()
    reference = evaluate_ranking(scores, train, test, ks=(2, 4))
    as_graph = InteractionGraph(test[0], test[1], 3, 6)
    as_mapping = {0: [1, 4], 1: [5]}
    for variant in (as_graph, as_mapping):
        assert evaluate_ranking(scores, train, variant, ks=(2, 4)) == reference
    assert evaluate_ranking(
        lambda users: scores[users], train, test, ks=(2, 4), batch_size=1
    ) == pytest.approx(reference)


def test_evaluate_ranking_with_model_and_popularity():
    torch.manual_seed(0)
    users = torch.randint(0, 20, (80,))
    items = torch.randint(0, 15, (80,))
    train = InteractionGraph(users, items, 20, 15)
    test = (torch.arange(20), torch.randint(0, 15, (20,)))
    model = ModalSpecificGNN(20, 15, 8, 2)
    full = evaluate_ranking(model, train, test, ks=(5,))
    assert evaluate_ranking(model, train, test, ks=(5,), batch_size=3) == pytest.approx(full)
    emb = model(train)
    prefs = model.user_preferences(train, emb)
    dense = sum(
        w * prefs[m] @ emb.items[m].t()
        for w, m in zip(model.modality_weights(), model.modalities, strict=True)
    )
    assert evaluate_ranking(dense.detach(), train, test, ks=(5,)) == pytest.approx(full)
    pop = evaluate_ranking(popularity_scorer(train), train, test, ks=(5,))
    assert 0.0 <= pop["recall@5"] <= 1.0


def test_evaluate_ranking_bad_input():
    train, scores, test = small_case()
    with pytest.raises(ValueError, match="test user ids"):
        evaluate_ranking(scores, train, (torch.tensor([3]), torch.tensor([0])), ks=(3,))
    with pytest.raises(ValueError, match="test item ids"):
        evaluate_ranking(scores, train, (torch.tensor([0]), torch.tensor([6])), ks=(3,))
    with pytest.raises(ValueError, match="score matrix"):
        evaluate_ranking(scores[:2], train, test, ks=(3,))
    with pytest.raises(ValueError, match="ks must be"):
        evaluate_ranking(scores, train, test, ks=(7,))
    with pytest.raises(TypeError, match="model_or_scores"):
        evaluate_ranking("nope", train, test, ks=(3,))
