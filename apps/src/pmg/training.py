"""Trainer and optimizer construction from config, shared by every stage.

Lightning's own checkpoints (for resuming inside a stage) are written through fsspec
transactions, i.e. to a temporary file renamed on completion; the artifacts a stage hands
to the next are safetensors + JSON written with ``pmg.atomic``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

__all__ = ["TrainerConfig", "OptimizerConfig", "OPTIMIZERS", "LrScheduleConfig", "LR_SCHEDULES", "build_optimizer",
           "build_lr_scheduler", "build_trainer"]

OPTIMIZERS = ("adamw", "adam", "sgd", "bnb.AdamW8bit", "bnb.Adam8bit", "bnb.PagedAdamW8bit")


@dataclass
class TrainerConfig:
    """Lightning ``Trainer`` options. ``devices`` is "auto", a count ("2") or a list ("0,1")."""

    max_epochs: int = 10
    max_steps: int = -1
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    log_every_n_steps: int = 10
    check_val_every_n_epoch: int = 1
    gradient_clip_val: float = 0.0
    enable_progress_bar: bool = True
    seed: int = 0
    # Early stopping on the stage's monitored metric; 0 turns it off.
    early_stopping_patience: int = 0

    def validate(self) -> None:
        if self.max_epochs < 1 and self.max_steps < 1:
            raise ValueError("trainer: set max_epochs >= 1 or max_steps >= 1")
        if self.num_nodes < 1:
            raise ValueError("trainer.num_nodes must be >= 1")

    def devices_value(self) -> str | int | list[int]:
        text = str(self.devices).strip()
        if text == "auto":
            return "auto"
        if "," in text:
            return [int(d) for d in text.split(",") if d.strip()]
        return int(text)


@dataclass
class OptimizerConfig:
    """``name`` is one of ``OPTIMIZERS``; the ``bnb.*`` ones are bitsandbytes 8-bit optimizers."""

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])

    def validate(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer.name {self.name!r} is not one of {OPTIMIZERS}")
        if self.lr <= 0:
            raise ValueError("optimizer.lr must be > 0")
        if len(self.betas) != 2:
            raise ValueError("optimizer.betas must have two values")


def build_optimizer(params: Iterable[torch.nn.Parameter] | Iterable[dict], config: OptimizerConfig) -> torch.optim.Optimizer:
    """The configured optimizer over ``params`` (parameters or parameter groups)."""
    config.validate()
    betas = (float(config.betas[0]), float(config.betas[1]))
    if config.name == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=betas)
    if config.name == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, betas=betas)
    if config.name == "sgd":
        return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay, momentum=betas[0])
    import bitsandbytes as bnb

    cls = getattr(bnb.optim, config.name.split(".", 1)[1])
    with warnings.catch_warnings():
        # Paged optimizers fall back to non-paged on CPU with a warning; the fallback is fine.
        warnings.filterwarnings("ignore", message=".*paged.*", category=UserWarning)
        return cls(params, lr=config.lr, weight_decay=config.weight_decay, betas=betas)


LR_SCHEDULES = ("constant", "cosine")


@dataclass
class LrScheduleConfig:
    """Learning rate over a fit of known length: a linear warm-up over ``warmup_steps``, then
    ``constant`` or ``cosine`` decay to zero at the last step."""

    name: str = "constant"
    warmup_steps: int = 0

    def validate(self) -> None:
        if self.name not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule.name {self.name!r} is not one of {LR_SCHEDULES}")
        if self.warmup_steps < 0:
            raise ValueError("lr_schedule.warmup_steps must be >= 0")


def build_lr_scheduler(optimizer: torch.optim.Optimizer, config: LrScheduleConfig,
                       total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler for ``optimizer``: factor (s + 1) / warmup during warm-up, then 1
    (constant) or ½(1 + cos(π · progress)) (cosine) of the configured learning rate."""
    config.validate()
    warmup, total = config.warmup_steps, max(1, total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_trainer(
    config: TrainerConfig,
    stage_dir: Path,
    *,
    monitor: str | None = None,
    mode: str = "max",
    callbacks: Sequence[Callback] = (),
    checkpointing: bool = True,
    **overrides,
) -> L.Trainer:
    """A ``Trainer`` logging to TensorBoard under ``stage_dir/tb`` and checkpointing to
    ``stage_dir/checkpoints`` (best by ``monitor`` and last, for resuming) unless
    ``checkpointing`` is off (short fits whose result is saved by the stage itself).

    On strategies that all-reduce over gloo (CPU DDP), mixed-precision bf16 is refused here
    with a clear message, since gloo cannot reduce bf16 tensors.
    """
    config.validate()
    strategy = config.strategy
    if strategy.startswith("ddp") and config.precision.startswith("bf16") and not torch.cuda.is_available():
        raise ValueError("trainer: bf16 precision with DDP on CPU is not supported (gloo cannot all-reduce bf16)")
    all_callbacks: list[Callback] = list(callbacks)
    checkpoint_kwargs = {"dirpath": stage_dir / "checkpoints", "save_last": True}
    if monitor is not None:
        checkpoint_kwargs.update(monitor=monitor, mode=mode, save_top_k=1, filename="best")
        if config.early_stopping_patience > 0:
            all_callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=config.early_stopping_patience))
    if checkpointing:
        all_callbacks.append(ModelCheckpoint(**checkpoint_kwargs))
    kwargs = dict(
        max_epochs=config.max_epochs if config.max_epochs > 0 else None,
        max_steps=config.max_steps,
        accelerator=config.accelerator,
        devices=config.devices_value(),
        num_nodes=config.num_nodes,
        strategy=strategy,
        precision=config.precision,
        log_every_n_steps=config.log_every_n_steps,
        check_val_every_n_epoch=config.check_val_every_n_epoch,
        gradient_clip_val=config.gradient_clip_val or None,
        enable_progress_bar=config.enable_progress_bar,
        logger=TensorBoardLogger(save_dir=str(stage_dir), name="tb", default_hp_metric=False),
        callbacks=all_callbacks,
        default_root_dir=str(stage_dir),
        enable_model_summary=False,
        enable_checkpointing=checkpointing,
    )
    kwargs.update(overrides)
    return L.Trainer(**kwargs)
