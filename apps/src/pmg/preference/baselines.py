"""The recommendation baselines the preference stage is measured against, on its own split.

- **PyG LightGCN** (``torch_geometric.nn.models.LightGCN``) trained under the stage's budget: the
  same embedding size and layers, the same batches (``BPRDataModule``), optimizer, learning
  rate, L2 weight (``model.l2_weight``), epochs and early stopping on validation NDCG@max(ks)
  (best epoch kept);
- **popularity**: items ranked by training degree (``prefgraph.popularity_scorer``).

:func:`held_out_ranking` is the stage's test protocol for any scorer: every item outside the
user's train + validation history is ranked. ``pmg evaluate`` and ``benchmarks/preference.py``
both use these, so their figures mean the same thing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.nn.models import LightGCN

from pmg.data.format import InteractionData
from pmg.data.modules import BPRDataModule
from pmg.data.split import Split
from pmg.preference.stage import PreferenceConfig
from pmg.training import build_optimizer
from prefgraph import InteractionGraph, Scorer, evaluate_ranking, lightgcn_scorer

__all__ = ["LightGCNFit", "fit_lightgcn", "lightgcn_bpr_loss", "split_graph", "held_out_ranking"]


def split_graph(data: InteractionData, rows: np.ndarray) -> InteractionGraph:
    """The graph of interaction ``rows`` (indices into ``data``'s interactions), no item features."""
    return InteractionGraph(torch.from_numpy(data.user[rows]), torch.from_numpy(data.item[rows]), data.num_users, data.num_items)


def lightgcn_bpr_loss(model: LightGCN, edge_index: torch.Tensor, batch: dict[str, torch.Tensor], offset: int,
                      l2_weight: float) -> torch.Tensor:
    """BPR + L2 for a ``BPRDataModule`` batch (``negatives`` [B, N]: every negative is used), one
    propagation per step as in PyG's LightGCN example (positives and negatives ranked in one call).
    ``offset`` is the number of users (item ``i`` is node ``offset + i``); returns a scalar."""
    negatives = batch["negatives"] + offset  # [B, N]
    users = batch["users"].unsqueeze(1).expand_as(negatives).reshape(-1)
    positives = (batch["positives"] + offset).unsqueeze(1).expand_as(negatives).reshape(-1)
    negatives = negatives.reshape(-1)
    label_index = torch.cat([torch.stack([users, positives]), torch.stack([users, negatives])], dim=1)
    pos_rank, neg_rank = model(edge_index, label_index).chunk(2)
    node_id = torch.cat([batch["users"], batch["positives"] + offset, negatives])
    return model.recommendation_loss(pos_rank, neg_rank, node_id=node_id, lambda_reg=l2_weight)


@dataclass
class LightGCNFit:
    """A trained LightGCN (best validation state) and how it got there."""

    model: LightGCN
    best_epoch: int
    best_val_ndcg: float
    epochs: int  # epochs run (early stopping may end before the budget)

    def scorer(self, data: InteractionData, split: Split) -> Scorer:
        """``users [B] -> scores [B, I]`` with the propagation over the training graph."""
        return lightgcn_scorer(self.model, split_graph(data, split.train))


def fit_lightgcn(config: PreferenceConfig, data: InteractionData, split: Split, *, max_epochs: int | None = None,
                 log: Callable[[str], None] | None = None) -> LightGCNFit:
    """PyG LightGCN under the preference stage's budget (``config``; ``max_epochs`` overrides
    its ``trainer.max_epochs``): same batches, optimizer, L2, early stopping on validation NDCG."""
    torch.manual_seed(config.trainer.seed)
    train_graph = split_graph(data, split.train)
    edge_index = train_graph.bipartite_edge_index()
    model = LightGCN(train_graph.num_nodes, config.model.embedding_dim, config.model.num_layers)
    optimizer = build_optimizer(model.parameters(), config.optimizer)
    datamodule = BPRDataModule(data, split, batch_size=config.batch_size, num_negatives=config.num_negatives)
    val = (torch.from_numpy(data.user[split.val]), torch.from_numpy(data.item[split.val]))
    k = max(config.ks)
    budget = config.trainer.max_epochs if max_epochs is None else max_epochs
    best, best_state, best_epoch, stale, epochs = -1.0, copy.deepcopy(model.state_dict()), 0, 0, 0
    for epoch in range(budget):
        model.train()
        for batch in datamodule.train_dataloader():
            loss = lightgcn_bpr_loss(model, edge_index, batch, train_graph.num_users, config.model.l2_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        epochs = epoch + 1
        ndcg = evaluate_ranking(lightgcn_scorer(model, train_graph), train_graph, val, config.ks)[f"ndcg@{k}"]
        if ndcg > best:
            best, best_state, best_epoch, stale = ndcg, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
            if 0 < config.trainer.early_stopping_patience <= stale:
                break
    model.load_state_dict(best_state)
    model.eval()
    if log is not None:
        log(f"  lightgcn: best val ndcg@{k} {best:.4f} at epoch {best_epoch}")
    return LightGCNFit(model, best_epoch, best, epochs)


def held_out_ranking(scorer: Scorer, data: InteractionData, split: Split, ks: Sequence[int],
                 users: np.ndarray | None = None) -> dict[str, float]:
    """Test Recall/NDCG/HitRate@ks of ``scorer`` with the stage's protocol (train + validation items
    masked), over the test interactions of ``users`` (data user indices; None: every test user)."""
    rows = split.test if users is None else split.test[np.isin(data.user[split.test], users)]
    history = split_graph(data, np.concatenate([split.train, split.val]))
    test = (torch.from_numpy(data.user[rows]), torch.from_numpy(data.item[rows]))
    return evaluate_ranking(scorer, history, test, ks)
