"""Step-based fitting shared by every zoo model: exactly ``max_steps`` random batches, one
Lightning ``fit`` with TensorBoard logs and a progress bar, no resumable checkpoints kept."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Dataset, RandomSampler

from pmg.training import TrainerConfig, build_trainer

__all__ = ["seed_init", "step_loader", "fit_steps"]


def seed_init(seed: int) -> None:
    """Seed every RNG before a model is built: its initial weights come from the global RNG,
    and the zoo's cache promises that the same inputs give the same models."""
    L.seed_everything(seed, workers=True, verbose=False)


def step_loader(dataset: Dataset, batch_size: int, steps: int, collate: Callable | None = None) -> DataLoader:
    """A loader of exactly ``steps`` batches drawn with replacement: one "epoch" is the whole fit,
    so a small dataset never forces an epoch boundary (and its checkpoint) every few steps."""
    sampler = RandomSampler(dataset, replacement=True, num_samples=steps * batch_size)  # type: ignore[arg-type]
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, drop_last=True)


def fit_steps(
    module: L.LightningModule,
    dataset: Dataset,
    *,
    trainer_config: TrainerConfig,
    batch_size: int,
    log_dir: Path,
    collate: Callable | None = None,
) -> None:
    """Train ``module`` for ``trainer_config.max_steps`` steps; logs under ``log_dir/tb``.

    The zoo's artifacts are ``save_pretrained`` folders written by the caller; Lightning's
    own checkpoint (a pickle, only useful to resume) is deleted once the fit completes.
    """
    seed_init(trainer_config.seed)
    loader = step_loader(dataset, batch_size, trainer_config.max_steps, collate)
    trainer = build_trainer(trainer_config, log_dir, max_epochs=1, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=loader)
    shutil.rmtree(log_dir / "checkpoints", ignore_errors=True)
