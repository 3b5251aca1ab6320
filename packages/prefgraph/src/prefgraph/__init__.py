"""prefgraph: modal-specific graph preference encoders for recommendation and personalised generation.

Users' interaction histories become per-modality preference vectors (``id``, ``visual``,
``textual``, ...) by propagating each modality separately over the user–item graph.

Typical training step::

    from prefgraph import InteractionGraph, ModalSpecificGNN, sample_bpr_batch, evaluate_ranking

    graph = InteractionGraph(user_idx, item_idx, num_users, num_items,
                             item_features={"visual": img_feats, "textual": txt_feats})
    model = ModalSpecificGNN(graph.num_users, graph.num_items, 64, 3,
                             feature_dims={"visual": img_feats.size(1), "textual": txt_feats.size(1)})
    users, pos, neg = sample_bpr_batch(graph, 1024)
    emb = model(graph)
    loss = model.loss(emb, users, pos, neg)
"""

from .baselines import lightgcn_scorer, popularity_scorer
from .content import content_preferences, principal_components
from .graph import InteractionGraph, normalized_bipartite_adjacency
from .losses import bpr_loss, info_nce_loss, l2_regularization, modality_dropout_mask
from .metrics import (
    Scorer,
    TestInteractions,
    evaluate_ranking,
    hit_rate_at_k,
    ndcg_at_k,
    recall_at_k,
    topk_items,
)
from .model import ID_MODALITY, LossTerms, ModalEmbeddings, ModalSpecificGNN, UserPreferences
from .propagation import BipartiteAdjacency, propagate
from .sampling import sample_bpr_batch, sample_negatives
from .weighting import history_weights, weighted_history

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # graph
    "InteractionGraph",
    "normalized_bipartite_adjacency",
    "BipartiteAdjacency",
    "propagate",
    # model
    "ModalSpecificGNN",
    "ModalEmbeddings",
    "UserPreferences",
    "LossTerms",
    "ID_MODALITY",
    # content preferences
    "content_preferences",
    "principal_components",
    # training
    "bpr_loss",
    "l2_regularization",
    "info_nce_loss",
    "modality_dropout_mask",
    "sample_bpr_batch",
    "sample_negatives",
    # evaluation
    "evaluate_ranking",
    "recall_at_k",
    "ndcg_at_k",
    "hit_rate_at_k",
    "topk_items",
    "Scorer",
    "TestInteractions",
    "popularity_scorer",
    "lightgcn_scorer",
    # reference-conditioned generation
    "history_weights",
    "weighted_history",
]
