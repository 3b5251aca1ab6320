"""The LightningModule of the preference stage: ``ModalSpecificGNN`` trained with BPR,
validated by full-ranking Recall/NDCG with training items masked."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import lightning as L
import torch
from prefgraph import InteractionGraph, ModalSpecificGNN, hit_rate_at_k, ndcg_at_k, recall_at_k, topk_items

from pmg.data.modules import UserItemSets
from pmg.training import OptimizerConfig, build_optimizer

__all__ = ["PreferenceModule"]


class PreferenceModule(L.LightningModule):
    """Trains ``ModalSpecificGNN`` on the training graph.

    Batches: training dicts from ``BPRDataModule`` (``users`` [B], ``positives`` [B],
    ``negatives`` [B, N]); validation batches of user indices [B] whose held-out items are
    ``val_targets``. Logs ``train/loss`` (and its terms), ``val/recall@K``, ``val/ndcg@K``,
    ``val/hit_rate@K`` averaged over validation users (reduced across DDP ranks).
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
        self._val_scores: tuple[torch.Tensor, torch.Tensor] | None = None

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
        weights = self.model.modality_weights().detach()
        for position, modality in enumerate(self.model.modalities):
            self.log(f"train/weight_{modality}", weights[position], batch_size=size)
        return terms.total

    def on_validation_epoch_start(self) -> None:
        # One propagation serves every validation batch of the epoch.
        with torch.no_grad():
            emb = self.model(self.graph)
            prefs = self.model.user_preferences(self.graph, emb)
            weights = self.model.modality_weights()
            user_side = torch.cat([weights[j] * prefs[m] for j, m in enumerate(self.model.modalities)], dim=1)
            item_side = torch.cat([emb.items[m] for m in self.model.modalities], dim=1)
        self._val_scores = (user_side, item_side)
        self._val_sums = {}

    def validation_step(self, users: torch.Tensor, batch_idx: int) -> None:
        assert self._val_scores is not None
        user_side, item_side = self._val_scores
        scores = user_side[users] @ item_side.t()
        topk = topk_items(scores, self.ks[-1], self.graph.seen_mask(users))
        relevant = torch.zeros_like(scores, dtype=torch.bool)
        for row, user in enumerate(users.tolist()):
            relevant[row, self.val_targets.items_of(user).to(relevant.device)] = True
        for k in self.ks:
            for name, metric in (("recall", recall_at_k), ("ndcg", ndcg_at_k), ("hit_rate", hit_rate_at_k)):
                value = metric(topk, relevant, k).nansum()
                key = f"{name}@{k}"
                self._val_sums[key] = self._val_sums.get(key, torch.zeros((), device=self.device)) + value
        self._val_sums["users"] = self._val_sums.get("users", torch.zeros((), device=self.device)) + users.numel()

    def on_validation_epoch_end(self) -> None:
        sums = dict(self._val_sums)
        if self.trainer.world_size > 1:
            stacked = self.all_gather(torch.stack([sums[k] for k in sorted(sums)])).reshape(self.trainer.world_size, -1).sum(0)
            sums = dict(zip(sorted(sums), stacked, strict=True))
        count = sums.pop("users").clamp_min(1)
        for key, value in sums.items():
            self.log(f"val/{key}", value / count, prog_bar=key == f"ndcg@{self.ks[-1]}", rank_zero_only=False, sync_dist=False)
        self._val_scores = None
