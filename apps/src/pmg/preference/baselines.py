"""The recommendation baselines the preference stage is measured against, on its own split.

- **PyG LightGCN** (``torch_geometric.nn.models.LightGCN``) given its own best shot
  (:class:`LightGCNConfig`): the paper's 3 layers, the preference stage's embedding size (like for
  like), batches (``BPRDataModule``) and optimizer, its own budget (up to ``max_epochs``, early
  stopping on validation NDCG@max(ks), best epoch kept) and its own learning rate and L2 weight,
  chosen from a small grid on the validation split (:func:`tune_lightgcn`; the test rows are
  dropped before anything is fitted, so they cannot leak into the choice);
- **popularity**: items ranked by training degree (``prefgraph.popularity_scorer``).

:func:`held_out_ranking` is the stage's test protocol for any scorer: every item outside the
user's train + validation history is ranked. ``pmg evaluate`` and ``benchmarks/preference.py``
both use these, so their figures mean the same thing.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch_geometric.nn.models import LightGCN
from torch_geometric.utils import to_torch_csr_tensor

from pmg.data.format import InteractionData
from pmg.data.modules import BPRDataModule
from pmg.data.split import Split
from pmg.preference.stage import PreferenceConfig
from pmg.training import build_optimizer
from prefgraph import InteractionGraph, Scorer, evaluate_ranking, lightgcn_scorer

__all__ = [
    "LightGCNConfig",
    "LightGCNFit",
    "LightGCNGridPoint",
    "LightGCNTuning",
    "fit_lightgcn",
    "tune_lightgcn",
    "lightgcn_adjacency",
    "lightgcn_bpr_loss",
    "split_graph",
    "held_out_ranking",
]


@dataclass
class LightGCNConfig:
    """PyG LightGCN's own settings; the learning rate and L2 weight come from a grid chosen on validation.

    ``embedding_dim``: -1 takes the preference stage's ``model.embedding_dim``, so both recommenders
    have the same capacity per node. ``num_layers``: 3, the LightGCN paper's (He et al., 2020).
    ``lrs`` × ``l2_weights``: the grid; each point trains from the same seed for at most
    ``max_epochs`` epochs, stopping after ``early_stopping_patience`` epochs without a better
    validation NDCG@max(preference ks) (0: never), and the point with the best validation NDCG
    is kept (ties: the first in grid order, lrs outer). ``l2_weight`` is PyG's ``BPRLoss``
    ``lambda_reg``: ``lambda * ||E0||^2 / B`` over the batch's layer-0 embeddings (users,
    positives, negatives), the paper's L2 on the ego embeddings. Batch size, negatives and the
    optimizer (name, betas, decoupled weight decay) are the preference stage's.

    These defaults are the full grid (6 points) that ``benchmarks/preference.py`` searches; ``pmg
    evaluate`` defaults to one L2 weight (``RecommendationEvaluationConfig``) to keep the pipeline's
    time: about 270 epochs for its 3 points on the default 1000-user catalog.
    """

    embedding_dim: int = -1
    num_layers: int = 3
    lrs: list[float] = field(default_factory=lambda: [1e-3, 5e-3, 1e-2])
    l2_weights: list[float] = field(default_factory=lambda: [1e-4, 1e-3])
    max_epochs: int = 400
    early_stopping_patience: int = 20

    def grid(self) -> list[tuple[float, float]]:
        """``(lr, l2_weight)`` pairs in the order they are tried (lrs outer)."""
        return [(float(lr), float(l2)) for lr in self.lrs for l2 in self.l2_weights]

    def validate(self, prefix: str = "lightgcn") -> None:
        if self.embedding_dim < -1 or self.embedding_dim == 0:
            raise ValueError(f"{prefix}.embedding_dim must be >= 1, or -1 for the preference stage's")
        if self.num_layers < 0:
            raise ValueError(f"{prefix}.num_layers must be >= 0")
        if not self.lrs or min(self.lrs) <= 0:
            raise ValueError(f"{prefix}.lrs must be a non-empty list of positive learning rates")
        if not self.l2_weights or min(self.l2_weights) < 0:
            raise ValueError(f"{prefix}.l2_weights must be a non-empty list of L2 weights >= 0")
        if self.max_epochs < 1:
            raise ValueError(f"{prefix}.max_epochs must be >= 1")
        if self.early_stopping_patience < 0:
            raise ValueError(f"{prefix}.early_stopping_patience must be >= 0 (0: train every epoch)")


def split_graph(data: InteractionData, rows: np.ndarray) -> InteractionGraph:
    """The graph of interaction ``rows`` (indices into ``data``'s interactions), no item features."""
    return InteractionGraph(torch.from_numpy(data.user[rows]), torch.from_numpy(data.item[rows]), data.num_users, data.num_items)


def lightgcn_adjacency(graph: InteractionGraph) -> torch.Tensor:
    """The graph's bipartite adjacency as a sparse CSR tensor [U + I, U + I], for LightGCN's ``edge_index``.

    PyG's ``LGConv`` normalises it like the ``edge_index`` form and gives the same embeddings, but
    propagates with one sparse matmul instead of a gather/scatter per edge: about 3x faster per
    training epoch on CPU here, which is what lets LightGCN train to early stopping on a grid.
    """
    with warnings.catch_warnings():
        # torch's "sparse CSR is in beta" notice: the CSR matmul is all LGConv uses of it.
        warnings.simplefilter("ignore", UserWarning)
        return to_torch_csr_tensor(graph.bipartite_edge_index(), size=(graph.num_nodes, graph.num_nodes))


def lightgcn_bpr_loss(model: LightGCN, edge_index: torch.Tensor, batch: dict[str, torch.Tensor], offset: int,
                      l2_weight: float) -> torch.Tensor:
    """BPR + L2 for a ``BPRDataModule`` batch (``negatives`` [B, N]: every negative is used), one
    propagation per step as in PyG's LightGCN example (positives and negatives ranked in one call).
    ``edge_index``: the training graph's [2, E] edges or its :func:`lightgcn_adjacency`; ``offset``
    is the number of users (item ``i`` is node ``offset + i``); returns a scalar."""
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
    lr: float
    l2_weight: float
    best_epoch: int  # 0-based
    best_val_ndcg: float
    epochs: int  # epochs run (early stopping may end before the budget)
    val_ndcg: list[float]  # validation NDCG@max(ks) after each epoch run [epochs]
    seconds: float

    def scorer(self, data: InteractionData, split: Split) -> Scorer:
        """``users [B] -> scores [B, I]`` with the propagation over the training graph."""
        return lightgcn_scorer(self.model, split_graph(data, split.train))


@dataclass
class LightGCNGridPoint:
    """One grid point's validation result (the model itself is kept only for the chosen point)."""

    lr: float
    l2_weight: float
    best_val_ndcg: float
    best_epoch: int  # 0-based
    epochs: int
    seconds: float


@dataclass
class LightGCNTuning:
    """The chosen fit and every grid point's validation result, in grid order."""

    best: LightGCNFit
    grid: list[LightGCNGridPoint]
    metric: str  # the validation metric the choice maximised, e.g. "ndcg@20"

    def describe(self) -> str:
        """One line for notes and logs: the chosen point, its epochs and the grid."""
        best = self.best
        lrs = sorted({p.lr for p in self.grid})
        l2s = sorted({p.l2_weight for p in self.grid})
        return (f"lr {best.lr:g}, L2 {best.l2_weight:g} chosen on validation {self.metric} "
                f"(grid lr {{{', '.join(f'{v:g}' for v in lrs)}}} x L2 {{{', '.join(f'{v:g}' for v in l2s)}}}); "
                f"best epoch {best.best_epoch + 1} of {best.epochs} run")


def _selection_split(data: InteractionData, split: Split, validation_users: np.ndarray | None) -> Split:
    """What fitting and selection see: ``split`` with no test rows, so the test part cannot leak in,
    and only ``validation_users``' validation rows (data user indices; None: every user's)."""
    val = split.val if validation_users is None else split.val[np.isin(data.user[split.val], validation_users)]
    return Split(split.train, val, np.empty(0, dtype=np.int64), split.scheme)


def fit_lightgcn(config: LightGCNConfig, preference: PreferenceConfig, data: InteractionData, split: Split, *,
                 lr: float, l2_weight: float, seed: int | None = None, validation_users: np.ndarray | None = None,
                 log: Callable[[str], None] | None = None) -> LightGCNFit:
    """PyG LightGCN at one ``(lr, l2_weight)``, to early stopping on validation NDCG@max(preference.ks).

    Uses ``split.train`` (edges, BPR triples) and ``split.val`` (early stopping; only the rows of
    ``validation_users``, data user indices, if given, as the preference stage selects on its
    training and selection users) only. ``seed`` (default ``preference.trainer.seed``) seeds the
    initialisation, shuffling and negatives.
    """
    split = _selection_split(data, split, validation_users)
    torch.manual_seed(preference.trainer.seed if seed is None else seed)
    start = time.perf_counter()
    train_graph = split_graph(data, split.train)
    adjacency = lightgcn_adjacency(train_graph)
    dim = preference.model.embedding_dim if config.embedding_dim == -1 else config.embedding_dim
    model = LightGCN(train_graph.num_nodes, dim, config.num_layers)
    optimizer = build_optimizer(model.parameters(), replace(preference.optimizer, lr=lr))
    datamodule = BPRDataModule(data, split, batch_size=preference.batch_size, num_negatives=preference.num_negatives)
    val = (torch.from_numpy(data.user[split.val]), torch.from_numpy(data.item[split.val]))
    k = max(preference.ks)
    best, best_state, best_epoch, stale, curve = -1.0, copy.deepcopy(model.state_dict()), 0, 0, []
    for epoch in range(config.max_epochs):
        model.train()
        for batch in datamodule.train_dataloader():
            loss = lightgcn_bpr_loss(model, adjacency, batch, train_graph.num_users, l2_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        ndcg = evaluate_ranking(lightgcn_scorer(model, train_graph), train_graph, val, [k])[f"ndcg@{k}"]
        curve.append(ndcg)
        if ndcg > best:
            best, best_state, best_epoch, stale = ndcg, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
            if 0 < config.early_stopping_patience <= stale:
                break
    model.load_state_dict(best_state)
    model.eval()
    seconds = time.perf_counter() - start
    if log is not None:
        log(f"  lightgcn lr {lr:g} L2 {l2_weight:g}: best val ndcg@{k} {best:.4f} at epoch {best_epoch + 1} "
            f"of {len(curve)} ({seconds:.0f}s)")
    return LightGCNFit(model, lr, l2_weight, best_epoch, best, len(curve), curve, seconds)


def tune_lightgcn(config: LightGCNConfig, preference: PreferenceConfig, data: InteractionData, split: Split, *,
                  seed: int | None = None, validation_users: np.ndarray | None = None,
                  log: Callable[[str], None] | None = None) -> LightGCNTuning:
    """Every ``config.grid()`` point fitted (:func:`fit_lightgcn`, the same ``seed`` and
    ``validation_users``); the one with the best validation NDCG@max(preference.ks) is kept. The
    test rows are never read."""
    best: LightGCNFit | None = None
    grid = []
    for lr, l2_weight in config.grid():
        fit = fit_lightgcn(config, preference, data, split, lr=lr, l2_weight=l2_weight, seed=seed,
                           validation_users=validation_users, log=log)
        grid.append(LightGCNGridPoint(lr, l2_weight, fit.best_val_ndcg, fit.best_epoch, fit.epochs, fit.seconds))
        if best is None or fit.best_val_ndcg > best.best_val_ndcg:
            best = fit  # only the chosen model is kept: the grid's others are dropped as they lose
    assert best is not None  # validate() requires a non-empty grid
    return LightGCNTuning(best, grid, f"ndcg@{max(preference.ks)}")


def held_out_ranking(scorer: Scorer, data: InteractionData, split: Split, ks: Sequence[int],
                 users: np.ndarray | None = None) -> dict[str, float]:
    """Test Recall/NDCG/HitRate@ks of ``scorer`` with the stage's protocol (train + validation items
    masked), over the test interactions of ``users`` (data user indices; None: every test user)."""
    rows = split.test if users is None else split.test[np.isin(data.user[split.test], users)]
    history = split_graph(data, np.concatenate([split.train, split.val]))
    test = (torch.from_numpy(data.user[rows]), torch.from_numpy(data.item[rows]))
    return evaluate_ranking(scorer, history, test, ks)
