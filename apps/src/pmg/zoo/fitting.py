"""Step-based fitting shared by every zoo model: exactly ``max_steps`` random batches, one
Lightning ``fit`` with TensorBoard logs and a progress bar; given a checkpoint folder, a fit
that was killed goes on from its last checkpoint there."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Dataset, RandomSampler

from pmg.training import ResumableLoader, TrainerConfig, build_trainer, resume_point

__all__ = ["seed_init", "step_loader", "fit_steps", "FitCheckpoints"]


def seed_init(seed: int) -> None:
    """Seed every RNG before a model is built: its initial weights come from the global RNG,
    and the zoo's cache promises that the same inputs give the same models."""
    L.seed_everything(seed, workers=True, verbose=False)


def step_loader(dataset: Dataset, batch_size: int, steps: int, collate: Callable | None = None) -> DataLoader:
    """A loader of exactly ``steps`` batches drawn with replacement: one "epoch" is the whole fit,
    so a small dataset never forces an epoch boundary (and its checkpoint) every few steps. A
    ``ResumableLoader``: a fit resumed within it draws the batches (and what collating draws) again."""
    sampler = RandomSampler(dataset, replacement=True, num_samples=steps * batch_size)  # type: ignore[arg-type]
    return ResumableLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, drop_last=True)


@dataclass(frozen=True)
class FitCheckpoints:
    """Where one zoo fit keeps the checkpoints a killed fit resumes from (``folder``) and the
    inputs they belong to (``key``: the zoo cache key)."""

    folder: Path
    key: str

    def part(self, name: str) -> FitCheckpoints:
        """The checkpoints of fit ``name`` of a model trained by several (its folder's sub-folder)."""
        return FitCheckpoints(self.folder / name, self.key)


def fit_steps(
    module: L.LightningModule,
    dataset: Dataset,
    *,
    trainer_config: TrainerConfig,
    batch_size: int,
    log_dir: Path,
    collate: Callable | None = None,
    checkpoints: FitCheckpoints | None = None,
) -> None:
    """Train ``module`` for ``trainer_config.max_steps`` steps; logs under ``log_dir/tb``.

    The zoo's artifacts are ``save_pretrained`` folders written by the caller. With
    ``checkpoints``, the fit saves every ``trainer_config.checkpoint_every_n_steps`` steps and at
    its end (``pmg.training.ResumeCheckpoint``) and a killed fit of the same key resumes from
    there, to the weights the uninterrupted fit reaches.
    """
    seed_init(trainer_config.seed)
    loader = step_loader(dataset, batch_size, trainer_config.max_steps, collate)
    resumable, start = (resume_point(checkpoints.folder, checkpoints.key, trainer_config.checkpoint_every_n_steps, f"zoo {log_dir.name}")
                        if checkpoints is not None else (None, None))
    trainer = build_trainer(trainer_config, log_dir, checkpointing=False, resumable=resumable, max_epochs=1,
                            num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=loader, ckpt_path=start, weights_only=True)
