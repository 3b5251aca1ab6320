"""Trainer and optimizer construction from config, shared by every stage.

The artifacts a stage hands to the next are safetensors + JSON written with ``pmg.atomic``.
A fit given a ``Resumable`` also keeps a checkpoint to resume from when its process is killed
(``ResumeCheckpoint``: every ``checkpoint_every_n_steps`` steps and at each epoch end, with
the global random states, committed by an atomically written ``resume.json`` that records
its size and SHA-256 and the stage fingerprint it belongs to); ``Resumable.checkpoint()``
is where the next attempt at the same inputs starts. With a ``ResumableLoader`` for its
training batches, a fit resumed from within an epoch repeats the uninterrupted one exactly;
otherwise only a resume from an epoch end does. A module that trains a small part of large
frozen models (token rows, LoRA) checkpoints that part alone (``TrainableOnlyCheckpoint``), and
one that draws from a ``random.Random`` of its own keeps its state there (``python_rng_state``).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch.utils.data import DataLoader

from pmg.atomic import atomic_file
from pmg.integrity import file_digest
from pmg.runs import RunWarning

__all__ = ["TrainerConfig", "OptimizerConfig", "OptimizerName", "OPTIMIZERS", "LrScheduleConfig", "LrScheduleName", "LR_SCHEDULES", "build_optimizer",
           "build_lr_scheduler", "build_trainer", "Resumable", "ResumeCheckpoint", "ResumableLoader", "resume_point", "RESUME_RECORD",
           "TrainableOnlyCheckpoint", "completed_fit", "rows_saved", "rows_restored", "python_rng_state", "restore_python_rng"]

RESUME_RECORD = "resume.json"

# The closed sets of names below are Literals, which load_config checks, rather than enums: an
# OptimizerConfig goes into LightningModule hyperparameters, and a checkpoint read with
# ``weights_only`` can hold a plain string but not an enum member.

# An optimizer's name (``optimizer.name``); the ``bnb.*`` ones are bitsandbytes 8-bit optimizers.
OptimizerName = Literal["adamw", "adam", "sgd", "bnb.AdamW8bit", "bnb.Adam8bit", "bnb.PagedAdamW8bit"]
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)


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
    # A stage that resumes a killed fit (preference, quantize, reward, the zoo's fits) checkpoints at every epoch end and,
    # when > 0, every this many training batches too (docs/faults.md).
    checkpoint_every_n_steps: int = 0

    def validate(self) -> None:
        if self.max_epochs < 1 and self.max_steps < 1:
            raise ValueError("trainer: set max_epochs >= 1 or max_steps >= 1")
        if self.num_nodes < 1:
            raise ValueError("trainer.num_nodes must be >= 1")
        if self.checkpoint_every_n_steps < 0:
            raise ValueError("trainer.checkpoint_every_n_steps must be >= 0 (0: at epoch ends only)")

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

    name: OptimizerName = "adamw"
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
    params = [_materialised(p) for p in params]  # read twice below: once to check, once by torch
    betas = (float(config.betas[0]), float(config.betas[1]))
    if config.name in ("adamw", "adam"):
        cls = torch.optim.AdamW if config.name == "adamw" else torch.optim.Adam
        # The fused kernel updates each parameter in one pass over its values, moments and gradient,
        # where the default on CPU makes a pass per operation: the preference stage's tables are
        # most of its memory traffic at 10^6 users (benchmarks/scale.py). Same update, up to rounding.
        return cls(params, lr=config.lr, weight_decay=config.weight_decay, betas=betas, fused=_fusable(params) or None)
    if config.name == "sgd":
        return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay, momentum=betas[0])
    # Lazy: bitsandbytes takes 4 s to import (and logs about its CPU kernels); only its optimizers need it.
    import bitsandbytes as bnb

    cls = getattr(bnb.optim, config.name.split(".", 1)[1])
    with warnings.catch_warnings():
        # Paged optimizers fall back to non-paged on CPU with a warning; the fallback is fine.
        warnings.filterwarnings("ignore", message=".*paged.*", category=UserWarning)
        return cls(params, lr=config.lr, weight_decay=config.weight_decay, betas=betas)


def _materialised(param: torch.nn.Parameter | dict) -> torch.nn.Parameter | dict:
    """A parameter as it is, or a parameter group whose ``params`` (a tensor or any iterable) is a list."""
    if not isinstance(param, dict):
        return param
    tensors = param["params"]
    return {**param, "params": [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)}


def _fusable(params: list[torch.nn.Parameter] | list[dict]) -> bool:
    """Whether torch's fused Adam kernels take every tensor in ``params``: floating point, on CPU or CUDA."""
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    return bool(tensors) and all(t.is_floating_point() and t.device.type in ("cpu", "cuda") for t in tensors)


# The learning rate after warm-up (``lr_schedule.name``): ``constant``, or ``cosine`` decay to zero.
LrScheduleName = Literal["constant", "cosine"]
LR_SCHEDULES: tuple[str, ...] = get_args(LrScheduleName)


@dataclass
class LrScheduleConfig:
    """Learning rate over a fit of known length: a linear warm-up over ``warmup_steps``, then
    ``constant`` or ``cosine`` decay to zero at the last step."""

    name: LrScheduleName = "constant"
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


def _python_state_saved(state: tuple[Any, ...]) -> dict[str, Any]:
    version, internal, gauss = state
    return {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _python_state_restored(saved: dict[str, Any]) -> tuple[Any, ...]:
    return saved["version"], tuple(saved["state"].tolist()), saved["gauss"]


def python_rng_state(rng: random.Random) -> dict[str, Any]:
    """The state of ``rng`` as a checkpoint holds it and ``weights_only`` loads it:
    ``{"version", "state" [625] int64, "gauss"}``; ``restore_python_rng`` puts it back."""
    return _python_state_saved(rng.getstate())


def restore_python_rng(rng: random.Random, saved: dict[str, Any]) -> None:
    """Put ``python_rng_state``'s ``saved`` back into ``rng``: it draws what the saved one would have."""
    rng.setstate(_python_state_restored(saved))


def _random_states() -> dict[str, Any]:
    """Every global random state a fit draws from, as tensors and numbers (``weights_only`` loads them)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": _python_state_saved(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_random_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(_python_state_restored(states["python"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumableLoader(DataLoader):
    """A training ``DataLoader`` that a fit resumes exactly from within an epoch.

    Lightning saves its ``state_dict`` in every checkpoint and hands it to ``load_state_dict``
    when a fit resumes. The state is where the epoch stood: the random states when its iterator
    was made, how many batches the fit had consumed (``position``, kept by ``ResumeCheckpoint``
    at each batch end; None between epochs), the random states before each batch made but not
    consumed yet, and the random states at the save. Resuming makes the iterator again from the
    first (the same order), passes over the consumed batches, makes those in flight again from
    theirs and goes on from the last: every batch, and every draw after them, is what the
    uninterrupted fit had. Batches are made as by a ``DataLoader``, drawing what it draws.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position: int | None = None
        self._epoch_states: dict[str, Any] | None = None
        self._before: dict[int, dict[str, Any]] = {}  # random states before batch i was made, i not yet consumed
        self._made = 0
        self._replay: dict[str, Any] | None = None
        self._replayed = False

    def state_dict(self) -> dict[str, Any]:
        if self.position is None or self._epoch_states is None:
            return {}  # between epochs: the next one starts from the restored random states
        return {"epoch": self._epoch_states, "consumed": self.position,
                "in_flight": [self._before[i] for i in range(self.position, self._made)], "now": _random_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._replay = state_dict or None

    @property
    def replayed(self) -> bool:
        """Whether the current epoch's iterator was made from a state ``load_state_dict`` gave."""
        return self._replayed

    def __iter__(self) -> Iterator[Any]:
        replay, self._replay = self._replay, None
        self._replayed = replay is not None
        if replay is not None:
            _restore_random_states(replay["epoch"])
        self._epoch_states = _random_states()
        self._before, self._made = {}, 0
        self.position = replay["consumed"] if replay is not None else 0
        # Made here, not in the generator: DataLoader draws its base seed when iter() is called.
        return self._batches(super().__iter__(), replay)

    def _batches(self, batches: Iterator[Any], replay: dict[str, Any] | None) -> Iterator[Any]:
        if replay is not None:
            for _ in range(replay["consumed"]):
                next(batches)  # made again in the epoch's order; the random states are set below
            self._made = replay["consumed"]
            for states in replay["in_flight"]:
                _restore_random_states(states)
                yield self._make(batches)
            _restore_random_states(replay["now"])
        while True:
            try:
                batch = self._make(batches)
            except StopIteration:
                return
            yield batch

    def _make(self, batches: Iterator[Any]) -> Any:
        """The next batch; the random states before it was made are kept until it is consumed."""
        states = _random_states()
        batch = next(batches)
        self._before[self._made] = states
        self._made += 1
        for consumed in [i for i in self._before if self.position is not None and i < self.position]:
            del self._before[consumed]
        return batch


@dataclass(frozen=True)
class Resumable:
    """Where a fit keeps the checkpoint it resumes from (``folder``, a stage's ``checkpoints/``),
    for which inputs (``fingerprint``: a checkpoint of other inputs is never resumed), and how
    often it saves one beside every epoch end (``every_n_steps``, 0: epoch ends only)."""

    folder: Path
    fingerprint: str
    every_n_steps: int = 0

    def checkpoint(self) -> Path | None:
        """The checkpoint to resume from: the one ``resume.json`` commits, when it was written for
        these inputs and its size and SHA-256 still match; None otherwise. A damaged one is
        reported (``RunWarning`` with its path) and not used: the fit starts over."""
        record_path = self.folder / RESUME_RECORD
        if not record_path.is_file():
            return None
        try:
            record = json.loads(record_path.read_text())
            path, size, digest = self.folder / record["checkpoint"], int(record["size"]), str(record["sha256"])
            fingerprint = record["fingerprint"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
            warnings.warn(f"{record_path} is damaged ({err}); the fit starts over", RunWarning, stacklevel=2)
            return None
        if fingerprint != self.fingerprint:
            return None
        if not path.is_file():
            problem = "missing"
        elif path.stat().st_size != size:
            problem = f"{path.stat().st_size} bytes where {size} were written"
        elif file_digest(path) != digest:
            problem = "its SHA-256 differs from the one recorded when it was written"
        else:
            return path
        warnings.warn(f"checkpoint {path} is damaged ({problem}); the fit starts over", RunWarning, stacklevel=2)
        return None


def resume_point(folder: Path, resume_key: str | None, every_n_steps: int, what: str) -> tuple[Resumable | None, Path | None]:
    """For a fit whose checkpoints live in ``folder``: its ``Resumable`` (None without a
    ``resume_key``) and the checkpoint to pass to ``fit`` as ``ckpt_path`` (None: a fresh fit,
    for which ``folder`` is emptied, since stale checkpoints would make Lightning version the
    new ones, best-v1.ckpt). ``what`` names the fit in the message that says it resumes."""
    resumable = Resumable(folder, resume_key, every_n_steps) if resume_key else None
    start = resumable.checkpoint() if resumable is not None else None
    if start is None:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        rank_zero_info(f"{what}: resuming the fit from {start}")
    return resumable, start


class ResumeCheckpoint(Callback):
    """Saves the fit to ``<folder>/resume-e<epoch>-b<batches>[-end].ckpt`` every ``every_n_steps``
    training batches (steps, unless gradients accumulate; a fit that steps its optimizers by hand
    may have none) and at each epoch end, then commits it: ``resume.json`` (written atomically) names it
    with its size, SHA-256 and the stage fingerprint, and older ones are deleted. A kill at any
    moment leaves ``resume.json`` naming a complete checkpoint (or none). The callback's own
    state is the global random states at the save, restored when a fit resumes from it, so
    that a resumed fit draws what the uninterrupted one drew."""

    def __init__(self, resumable: Resumable) -> None:
        self.resumable = resumable
        self._loader_states: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return _random_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks before the fit loop builds its data iterators: what they
        # draw comes from the restored states, as in the fit that was interrupted.
        _restore_random_states(state_dict)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        fit_loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
        self._loader_states = [state for state in fit_loop.get("combined_loader", []) if state]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning hands a loader its saved position only when it sets the loader up after
        # restoring the checkpoint's loops; set up earlier, the fit would silently take another course.
        if self._loader_states and not any(loader.replayed for loader in _resumable_loaders(trainer)):
            raise RuntimeError("the fit resumed from within an epoch, but its training loader did not get its position "
                               "back: Lightning set the loader up before restoring the checkpoint (configure_optimizers "
                               "reading trainer.estimated_stepping_batches does); the resumed fit would not repeat the "
                               "interrupted one")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        for loader in _resumable_loaders(trainer):
            loader.position = batch_idx + 1
        batches = trainer.fit_loop.total_batch_idx + 1
        every = self.resumable.every_n_steps
        if every > 0 and batches % every == 0:
            self._save(trainer, f"resume-e{trainer.current_epoch}-b{batches}.ckpt")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for loader in _resumable_loaders(trainer):
            loader.position = None
        self._save(trainer, f"resume-e{trainer.current_epoch}-b{trainer.fit_loop.total_batch_idx + 1}-end.ckpt")

    def _save(self, trainer: L.Trainer, name: str) -> None:
        folder = self.resumable.folder
        path = folder / name
        if not trainer.is_global_zero:
            trainer.save_checkpoint(path, weights_only=False)  # every rank takes part; global rank 0 writes
            return
        # Through pmg.atomic: Lightning's own write goes by a temporary file in the system's temp
        # folder, and an error there (a full disk) names no file.
        with atomic_file(path) as tmp:
            trainer.save_checkpoint(tmp, weights_only=False)
        record = {"checkpoint": name, "size": path.stat().st_size, "sha256": file_digest(path),
                  "fingerprint": self.resumable.fingerprint, "epoch": trainer.current_epoch,
                  "batches": trainer.fit_loop.total_batch_idx + 1}
        with atomic_file(folder / RESUME_RECORD) as tmp:
            tmp.write_text(json.dumps(record, indent=2))
        for older in folder.glob("resume-*.ckpt"):
            if older.name != name:
                older.unlink(missing_ok=True)


def _resumable_loaders(trainer: L.Trainer) -> list[ResumableLoader]:
    loaders = trainer.train_dataloader
    found = loaders.values() if isinstance(loaders, dict) else loaders if isinstance(loaders, list | tuple) else [loaders]
    return [loader for loader in found if isinstance(loader, ResumableLoader)]


def completed_fit(start: Path | None, max_steps: int) -> dict[str, Any] | None:
    """The checkpoint ``start`` (``resume_point``'s) when the fit that saved it had reached
    ``max_steps`` optimizer steps, read without unpickling objects; None otherwise (no
    checkpoint, or the fit goes on from it). A stage reads a completed fit's outcome from it
    instead of building the fit again."""
    if start is None:
        return None
    checkpoint = torch.load(start, map_location="cpu", weights_only=True)
    return checkpoint if int(checkpoint.get("global_step", -1)) >= max_steps else None


def rows_saved(tensor: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor | dict[str, Any]:
    """``tensor`` as a checkpoint keeps it: whole (``rows`` None) or only ``rows`` [R] of its
    first dimension, as ``{"rows": [R], "values": [R, ...], "shape": [...]}``."""
    if rows is None:
        return tensor.detach().clone()
    rows = rows.to(tensor.device)
    return {"rows": rows.cpu(), "values": tensor.detach().index_select(0, rows).clone(), "shape": list(tensor.shape)}


def rows_restored(saved: torch.Tensor | dict[str, Any], base: torch.Tensor) -> torch.Tensor:
    """The tensor ``rows_saved`` kept: the whole of it, or ``base`` (same shape) with the kept rows put back."""
    if isinstance(saved, torch.Tensor):
        return saved
    if list(base.shape) != saved["shape"]:
        raise ValueError(f"a checkpoint's rows of a {saved['shape']} tensor do not fit one of {list(base.shape)}")
    rows = saved["rows"].to(base.device)
    return base.detach().clone().index_copy_(0, rows, saved["values"].to(base.device, base.dtype))


def _rows_outside_are_zero(tensor: torch.Tensor, rows: torch.Tensor) -> bool:
    outside = torch.ones(tensor.shape[0], dtype=torch.bool, device=tensor.device)
    outside[rows.to(tensor.device)] = False
    return not bool(torch.count_nonzero(tensor.reshape(tensor.shape[0], -1), dim=1)[outside].any())


def _rows_outside_digest(tensor: torch.Tensor, rows: torch.Tensor, block: int = 4096) -> str:
    """SHA-256 of the bytes of ``tensor``'s rows other than ``rows``, read in blocks of rows (no copy of the whole)."""
    digest = hashlib.sha256()
    outside = torch.ones(tensor.shape[0], dtype=torch.bool)
    outside[rows.cpu()] = False
    for start in range(0, tensor.shape[0], block):
        kept = tensor.detach()[start : start + block][outside[start : start + block].to(tensor.device)]
        digest.update(kept.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class TrainableOnlyCheckpoint:
    """A ``LightningModule`` mixin (listed before ``LightningModule``) for a fit that trains a
    small part of large frozen models (new token rows, LoRA): its checkpoints hold that part
    alone, never a copy of the frozen weights.

    ``checkpointed_parameters()`` gives ``{name: (parameter, rows)}`` of what trains: ``rows``
    [R] the rows that do of a parameter of which only some train (an embedding matrix whose
    other rows are kept at their loaded values), or None (all of it). A checkpoint's
    ``state_dict`` is empty; ``"trainable"`` holds those parameters: a row-trained one by its
    rows alone while its other rows are as the module was built (a SHA-256 of them taken before
    the fit says so), in full once they moved (weight decay of an optimizer that does not keep
    them). The optimizer states of a row-trained parameter hold only its rows when the other
    rows are all zero (Adam's moments where the gradient is masked), in full otherwise.
    Resuming puts them back into a module built again from the same inputs, whose frozen
    weights, and rows as built, are those the interrupted fit had.
    """

    def checkpointed_parameters(self) -> dict[str, tuple[torch.nn.Parameter, torch.Tensor | None]]:
        raise NotImplementedError

    def _note_rows_as_built(self) -> None:
        if getattr(self, "_rows_as_built", None) is None:
            self._rows_as_built = {name: _rows_outside_digest(parameter, rows)
                                   for name, (parameter, rows) in self.checkpointed_parameters().items() if rows is not None}

    def on_fit_start(self) -> None:
        self._note_rows_as_built()  # a resumed fit noted them in on_load_checkpoint, before restoring

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        parts = self.checkpointed_parameters()
        built: dict[str, str] = getattr(self, "_rows_as_built", None) or {}
        checkpoint["state_dict"] = {}
        checkpoint["trainable"] = {
            name: rows_saved(parameter, rows if rows is not None and built.get(name) == _rows_outside_digest(parameter, rows) else None)
            for name, (parameter, rows) in parts.items()}
        row_trained = {id(parameter): rows for parameter, rows in parts.values() if rows is not None}
        trainer: L.Trainer = self.trainer  # type: ignore[attr-defined]
        for optimizer, state in zip(trainer.optimizers, checkpoint.get("optimizer_states", ()), strict=False):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            for index, values in state["state"].items():
                rows = row_trained.get(id(params[index]))
                if rows is None:
                    continue
                # A new dict: the state_dict's per-parameter dicts are the optimizer's own.
                state["state"][index] = {
                    key: rows_saved(value, rows) if isinstance(value, torch.Tensor) and value.shape == params[index].shape
                    and _rows_outside_are_zero(value, rows) else value
                    for key, value in values.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._note_rows_as_built()
        parts = self.checkpointed_parameters()
        saved = checkpoint["trainable"]
        if saved.keys() != parts.keys():
            raise ValueError(f"the checkpoint holds the parameters {sorted(saved)[:3]}…, this fit trains {sorted(parts)[:3]}…")
        with torch.no_grad():
            for name, (parameter, _) in parts.items():
                parameter.copy_(rows_restored(saved[name], parameter))
        for state in checkpoint.get("optimizer_states", ()):
            for index, values in state["state"].items():
                state["state"][index] = {key: rows_restored(value, torch.zeros(value["shape"], dtype=value["values"].dtype))
                                         if isinstance(value, dict) else value for key, value in values.items()}
        self.strict_loading = False  # the state_dict is empty: the frozen weights are the module's own


def build_trainer(
    config: TrainerConfig,
    stage_dir: Path,
    *,
    monitor: str | None = None,
    mode: str = "max",
    callbacks: Sequence[Callback] = (),
    checkpointing: bool = True,
    resumable: Resumable | None = None,
    **overrides,
) -> L.Trainer:
    """A ``Trainer`` logging to TensorBoard under ``stage_dir/tb`` and checkpointing to
    ``stage_dir/checkpoints`` (best by ``monitor`` and last) unless ``checkpointing`` is off
    (short fits whose result is saved by the stage itself); with ``resumable``, also the
    checkpoints it resumes from (``ResumeCheckpoint``; pass ``resumable.checkpoint()`` as
    ``ckpt_path`` to ``fit``).

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
    if resumable is not None:
        all_callbacks.append(ResumeCheckpoint(resumable))
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
