"""Full-ranking top-K metrics (Recall, NDCG, HitRate) with training items masked.

Conventions (binary relevance, ranks start at 1):

- Recall@K = |top-K ∩ relevant| / |relevant|
- NDCG@K = DCG@K / IDCG@K with DCG = Σ_r 1[item at rank r relevant] / log2(r + 1) and IDCG the DCG
  of a ranking that puts min(K, |relevant|) relevant items first
- HitRate@K = 1 if any relevant item is in the top K, else 0

Per-user functions return NaN for users without relevant items (their metric is undefined);
:func:`evaluate_ranking` only evaluates users that have at least one test item.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from .graph import InteractionGraph
from .model import ModalSpecificGNN

__all__ = [
    "topk_items",
    "recall_at_k",
    "ndcg_at_k",
    "hit_rate_at_k",
    "evaluate_ranking",
    "TestInteractions",
    "Scorer",
]

Scorer = Callable[[Tensor], Tensor]
"""Maps user indices [B] to scores over all items [B, I]."""

TestInteractions = InteractionGraph | tuple[Tensor, Tensor] | Mapping[int, Sequence[int]]
"""Held-out interactions: a graph of test edges, ``(user_index [P], item_index [P])``, or ``{user: items}``."""


def topk_items(scores: Tensor, k: int, exclude: Tensor | None = None) -> Tensor:
    """Indices of the ``k`` highest scores per row, LongTensor [B, k], best first.

    Args:
        scores: FloatTensor [B, I].
        k: 1 <= k <= I.
        exclude: optional BoolTensor [B, I]; ``True`` entries are ranked last (score -inf).
    """
    if not 0 < k <= scores.size(1):
        raise ValueError(f"k must be in [1, {scores.size(1)}], got {k}")
    if exclude is not None:
        scores = scores.masked_fill(exclude, float("-inf"))
    return scores.topk(k, dim=1).indices


def _hits(topk: Tensor, relevant: Tensor, k: int) -> tuple[Tensor, Tensor]:
    if topk.dim() != 2 or relevant.dim() != 2 or topk.size(0) != relevant.size(0):
        raise ValueError(
            f"expected topk [B, K'] and relevant [B, I], got {tuple(topk.shape)} and {tuple(relevant.shape)}"
        )
    if not 0 < k <= topk.size(1):
        raise ValueError(f"k={k} but only {topk.size(1)} ranked items per user were given")
    hits = relevant.bool().gather(1, topk[:, :k])  # [B, k]
    num_relevant = relevant.bool().sum(dim=1)  # [B]
    return hits, num_relevant


def recall_at_k(topk: Tensor, relevant: Tensor, k: int) -> Tensor:
    """Recall@k per user, FloatTensor [B] (NaN where a user has no relevant item).

    Args:
        topk: LongTensor [B, K'] (K' >= k), ranked item indices, best first.
        relevant: BoolTensor [B, I], ``True`` for held-out relevant items.
        k: cut-off.
    """
    hits, num_relevant = _hits(topk, relevant, k)
    return hits.sum(dim=1).float() / num_relevant.float()  # 0 / 0 -> NaN by design


def ndcg_at_k(topk: Tensor, relevant: Tensor, k: int) -> Tensor:
    """NDCG@k per user (binary relevance), FloatTensor [B] (NaN where no relevant item)."""
    hits, num_relevant = _hits(topk, relevant, k)
    discounts = 1.0 / torch.log2(torch.arange(2, k + 2, device=topk.device, dtype=torch.float32))
    dcg = (hits.float() * discounts).sum(dim=1)
    ideal_cumulative = torch.cat([discounts.new_zeros(1), discounts.cumsum(0)])  # IDCG for 0..k relevant
    idcg = ideal_cumulative[num_relevant.clamp_max(k)]
    return dcg / idcg  # 0 / 0 -> NaN by design


def hit_rate_at_k(topk: Tensor, relevant: Tensor, k: int) -> Tensor:
    """HitRate@k per user, FloatTensor [B] of 0/1 (NaN where no relevant item)."""
    hits, num_relevant = _hits(topk, relevant, k)
    out = hits.any(dim=1).float()
    return out.masked_fill(num_relevant == 0, float("nan"))


def _test_pairs(test_user_items: TestInteractions, graph: InteractionGraph) -> tuple[Tensor, Tensor]:
    if isinstance(test_user_items, InteractionGraph):
        if test_user_items.num_items != graph.num_items or test_user_items.num_users != graph.num_users:
            raise ValueError("test graph and training graph must have the same num_users and num_items")
        users, items = test_user_items.user_index, test_user_items.item_index
    elif isinstance(test_user_items, Mapping):
        pairs = [(int(u), int(i)) for u, its in test_user_items.items() for i in its]
        users = torch.tensor([p[0] for p in pairs], dtype=torch.long)
        items = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    else:
        users, items = (torch.as_tensor(x).long().reshape(-1) for x in test_user_items)
    if users.numel() != items.numel():
        raise ValueError(f"test user and item index lengths differ: {users.numel()} vs {items.numel()}")
    if users.numel() == 0:
        raise ValueError("no test interactions given")
    if users.min() < 0 or users.max() >= graph.num_users:
        raise ValueError(f"test user ids must be in [0, num_users={graph.num_users})")
    if items.min() < 0 or items.max() >= graph.num_items:
        raise ValueError(f"test item ids must be in [0, num_items={graph.num_items})")
    return users.to(graph.device), items.to(graph.device)


def _make_scorer(model_or_scores: ModalSpecificGNN | Scorer | Tensor, graph: InteractionGraph) -> Scorer:
    if isinstance(model_or_scores, ModalSpecificGNN):
        # Cold-start users are scored from their inferred preference (see ModalSpecificGNN.scorer).
        return model_or_scores.scorer(graph)
    if isinstance(model_or_scores, Tensor):
        scores = model_or_scores
        if scores.shape != (graph.num_users, graph.num_items):
            raise ValueError(
                f"score matrix must be [num_users, num_items] = [{graph.num_users}, {graph.num_items}], "
                f"got {tuple(scores.shape)}"
            )
        return lambda users: scores[users]
    if callable(model_or_scores):
        return model_or_scores
    raise TypeError(
        "model_or_scores must be a ModalSpecificGNN, a callable users [B] -> scores [B, I], or a "
        f"score matrix [U, I]; got {type(model_or_scores).__name__}"
    )


@torch.no_grad()
def evaluate_ranking(
    model_or_scores: ModalSpecificGNN | Scorer | Tensor,
    graph: InteractionGraph,
    test_user_items: TestInteractions,
    ks: Sequence[int] = (10, 20),
    *,
    exclude_seen: bool = True,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Full-ranking Recall/NDCG/HitRate@K averaged over users that have test items.

    Users are scored in batches of ``batch_size`` against all I items, so peak memory is
    O(batch_size * I) whatever U is. Training items are masked (``exclude_seen``); a test item
    that is also a training item is therefore never retrieved; split so that they are disjoint.

    Args:
        model_or_scores: a :class:`ModalSpecificGNN` (run once on ``graph``), a callable
            ``users [B] -> scores [B, I]`` (e.g. :func:`prefgraph.lightgcn_scorer`), or a dense
            score matrix [U, I].
        graph: the training graph (its items are masked).
        test_user_items: held-out interactions (see :data:`TestInteractions`).
        ks: cut-offs.
        exclude_seen: mask each user's training items.
        batch_size: users per scoring batch.

    Returns:
        ``{"recall@K": float, "ndcg@K": float, "hit_rate@K": float, ..., "num_users": float}``.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1 or ks[-1] > graph.num_items:
        raise ValueError(f"ks must be in [1, num_items={graph.num_items}], got {ks}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    scorer = _make_scorer(model_or_scores, graph)
    test_users, test_items = _test_pairs(test_user_items, graph)
    eval_users, test_rows = torch.unique(test_users, return_inverse=True)

    sums = {f"{name}@{k}": 0.0 for k in ks for name in ("recall", "ndcg", "hit_rate")}
    for start in range(0, eval_users.numel(), batch_size):
        users = eval_users[start : start + batch_size]
        in_batch = (test_rows >= start) & (test_rows < start + users.numel())
        relevant = torch.zeros(users.numel(), graph.num_items, dtype=torch.bool, device=users.device)
        relevant[test_rows[in_batch] - start, test_items[in_batch]] = True
        scores = scorer(users)
        if scores.shape != relevant.shape:
            raise ValueError(
                f"scorer returned {tuple(scores.shape)} for {users.numel()} users, expected {tuple(relevant.shape)}"
            )
        topk = topk_items(scores.float(), ks[-1], graph.seen_mask(users) if exclude_seen else None)
        for k in ks:
            sums[f"recall@{k}"] += float(recall_at_k(topk, relevant, k).sum())
            sums[f"ndcg@{k}"] += float(ndcg_at_k(topk, relevant, k).sum())
            sums[f"hit_rate@{k}"] += float(hit_rate_at_k(topk, relevant, k).sum())
    num_users = eval_users.numel()
    result = {name: total / num_users for name, total in sums.items()}
    result["num_users"] = float(num_users)
    return result
