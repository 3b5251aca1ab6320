"""The LightningModule of the preference stage: ``ModalSpecificGNN`` trained with BPR,
validated by full-ranking Recall/NDCG with training items masked."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict

import lightning as L
import torch

from pmg.data.modules import UserItemSets
from pmg.training import OptimizerConfig, build_optimizer
from prefgraph import InteractionGraph, ModalSpecificGNN, hit_rate_at_k, ndcg_at_k, recall_at_k, topk_items

__all__ = ["PreferenceModule"]

_METRICS = (("recall", recall_at_k), ("ndcg", ndcg_at_k), ("hit_rate", hit_rate_at_k))


class PreferenceModule(L.LightningModule):
    """Trains ``ModalSpecificGNN`` on the training graph.

    Every training step propagates the whole graph once (full-graph LightGCN-style training:
    no neighbour sampling, which would need pyg-lib/torch-sparse) and scores the batch.

    Batches: training dicts from ``BPRDataModule`` (``users`` [B], ``positives`` [B],
    ``negatives`` [B, N]); validation batches of user indices [B] whose held-out items are
    ``val_targets``. Logs ``train/loss`` (and its terms, and the modality weights),
    ``val/recall@K``, ``val/ndcg@K``, ``val/hit_rate@K`` averaged over validation users
    (summed over DDP ranks before averaging, so every rank logs, and early-stops on, the same value).

    Picklable (for ``ddp_spawn``): it holds tensors, the model and plain config only; the
    validation scorer lives only between ``on_validation_epoch_start`` and its end.
    """

    def __init__(
        self,
        graph: InteractionGraph,
        model: ModalSpecificGNN,
        optimizer: OptimizerConfig,
        val_targets: UserItemSets,
        ks: Sequence[int] = (10, 20),
    ) -> None:
        super().__init__()
        self.graph = graph
        self.model = model
        self.optimizer_config = optimizer
        self.val_targets = val_targets
        self.ks = tuple(sorted(ks))
        self.save_hyperparameters({"model": model.get_config(), "optimizer": asdict(optimizer), "ks": list(self.ks)})
        self._val_sums: dict[str, torch.Tensor] = {}
        self._val_scorer: Callable[[torch.Tensor], torch.Tensor] | None = None

    def setup(self, stage: str) -> None:
        self.graph = self.graph.to(self.device)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(self.model.parameters(), self.optimizer_config)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        emb = self.model(self.graph)
        terms = self.model.loss_terms(emb, batch["users"], batch["positives"], batch["negatives"])
        size = batch["users"].numel()
        self.log("train/loss", terms.total, prog_bar=True, batch_size=size)
        self.log("train/bpr", terms.bpr, batch_size=size)
        self.log("train/l2", terms.l2, batch_size=size)
        weights = self.model.modality_weights().detach()
        for position, modality in enumerate(self.model.modalities):
            self.log(f"train/weight_{modality}", weights[position], batch_size=size)
        return terms.total

    def on_validation_epoch_start(self) -> None:
        # One propagation serves every validation batch of the epoch; prefgraph's scorer is the
        # same one `evaluate_ranking` uses (cold-start users scored from their inferred preference).
        self._val_scorer = self.model.scorer(self.graph)
        self._val_sums = {}

    def validation_step(self, users: torch.Tensor, batch_idx: int) -> None:
        """``users`` [B]: score them against all items [B, I], mask training items, add up metrics."""
        assert self._val_scorer is not None
        scores = self._val_scorer(users)
        topk = topk_items(scores, self.ks[-1], self.graph.seen_mask(users))
        relevant = torch.zeros_like(scores, dtype=torch.bool)
        for row, user in enumerate(users.tolist()):
            relevant[row, self.val_targets.items_of(user).to(relevant.device)] = True
        for k in self.ks:
            for name, metric in _METRICS:
                self._accumulate(f"{name}@{k}", metric(topk, relevant, k).nansum())
        self._accumulate("users", torch.tensor(float(users.numel()), device=self.device))

    def _accumulate(self, key: str, value: torch.Tensor) -> None:
        self._val_sums[key] = self._val_sums.get(key, torch.zeros((), device=self.device)) + value

    def on_validation_epoch_end(self) -> None:
        sums = dict(self._val_sums)
        if not sums:  # no validation batch on this rank
            sums = {f"{name}@{k}": torch.zeros((), device=self.device) for k in self.ks for name, _ in _METRICS}
            sums["users"] = torch.zeros((), device=self.device)
        if self.trainer.world_size > 1:
            keys = sorted(sums)
            # float32 on purpose: gloo cannot all-reduce bf16.
            stacked = torch.stack([sums[k].float() for k in keys])
            gathered = self.all_gather(stacked).reshape(self.trainer.world_size, -1).sum(0)
            sums = dict(zip(keys, gathered, strict=True))
        count = sums.pop("users").clamp_min(1)
        for key, value in sums.items():
            self.log(f"val/{key}", value / count, prog_bar=key == f"ndcg@{self.ks[-1]}", rank_zero_only=False, sync_dist=False)
        self._val_scorer = None
