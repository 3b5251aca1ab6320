"""The preference stage on 2 processes (gloo, ``ddp_spawn`` inside pytest) trains what 1 process trains:
each rank fits its own half of the training rows, gradient averaging keeps the replicas identical, and
their weights are those of one process fitting every row, up to float rounding; rank 0 writes the artifacts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file, save_file

from pmg.config import load_config
from pmg.data import read_dataset
from pmg.data.split import temporal_split
from pmg.preference.stage import PreferenceConfig, train_preferences
from prefgraph import InteractionGraph, sample_negatives

EPOCHS = 3
# float32 rounding only: a batch's gradient summed in one process, or as two half sums all-reduced, differ
# in the last bits (~1e-7 relative), and 3 Adam steps carry that over without amplifying it much. A rank
# that skipped the gradient averaging, or a fit on one half of the rows, is off by about one Adam step
# (lr 5e-3) in many weights, which the test checks the fit does move them by.
TOLERANCE = 1e-5
MOVED = 1e-3


class _PinNegativesAndRecord(Callback):
    """Pins each example's negative item; records, per process, the (user, positive) pairs of the first
    epoch, the optimizer steps, and the weights before and after training (one file per rank).

    The stage draws negatives from each process's global generator, so 2 ranks and 1 process would draw
    different ones for the same rows; here one table gives the same negative to a (user, positive) pair
    in a given epoch however the rows are split. Module-level, with plain attributes: ``ddp_spawn`` pickles it.
    """

    def __init__(self, folder: str, negatives: torch.Tensor) -> None:
        self.folder, self.negatives = folder, negatives  # negatives: int64 [epochs, users, items]
        self.pairs: list[torch.Tensor] = []
        self.initial: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        batch["negatives"][:, 0] = self.negatives[trainer.current_epoch, batch["users"], batch["positives"]]
        if trainer.current_epoch == 0:
            self.pairs.append(torch.stack([batch["users"], batch["positives"]], 1).cpu())

    def on_train_end(self, trainer, pl_module) -> None:
        tensors = {f"weight.{k}": v.detach().cpu().contiguous() for k, v in pl_module.model.state_dict().items()}
        tensors.update({f"initial.{k}": v for k, v in self.initial.items()})
        tensors["pairs"] = torch.cat(self.pairs)
        tensors["steps"] = torch.tensor(trainer.global_step)
        tensors["world_size"] = torch.tensor(trainer.world_size)
        save_file(tensors, str(Path(self.folder) / f"rank{trainer.global_rank}.safetensors"))


def _fit(small_catalog: Path, tmp_path: Path, name: str, devices: int):
    data = read_dataset(small_catalog)
    split = temporal_split(data)
    # An even number of rows: DistributedSampler would otherwise repeat one to give both ranks as many.
    split = replace(split, train=split.train[: len(split.train) // 2 * 2])
    graph = InteractionGraph(torch.from_numpy(data.user[split.train]), torch.from_numpy(data.item[split.train]),
                             data.num_users, data.num_items)
    every_pair = torch.arange(data.num_users).repeat_interleave(data.num_items)
    generator = torch.Generator().manual_seed(0)
    negatives = torch.stack([sample_negatives(graph, every_pair, generator=generator).view(data.num_users, data.num_items)
                             for _ in range(EPOCHS)])
    strategy = ["trainer.strategy=ddp_spawn"] if devices > 1 else []
    config = load_config(PreferenceConfig, None, [
        "features.visual=pixels", "features.textual=words", f"features.cache_dir={tmp_path / 'features'}",
        "model.embedding_dim=16", "model.projection_hidden_dim=32",
        # Modality dropout draws a mask per example from each process's generator: off, like the negatives' draw.
        "model.modality_dropout=0.0",
        # One batch per epoch holds every training row on 1 process and each rank's half on 2, so every
        # optimizer step averages the same per-example gradients whatever order the samplers put rows in.
        "batch_size=4096", f"trainer.max_epochs={EPOCHS}", "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu", f"trainer.devices={devices}", *strategy,
    ])
    folder = tmp_path / name
    folder.mkdir()
    assert len(split.train) <= config.batch_size
    artifacts = train_preferences(config, data, split, folder / "out", callbacks=[_PinNegativesAndRecord(str(folder), negatives)])
    return data, split, artifacts, folder


def test_two_process_gloo_ddp_fit_matches_one_process(small_catalog: Path, tmp_path: Path) -> None:
    data, split, _, single = _fit(small_catalog, tmp_path, "single", devices=1)
    _, _, artifacts, double = _fit(small_catalog, tmp_path, "ddp", devices=2)
    one = load_file(single / "rank0.safetensors")
    ranks = [load_file(double / f"rank{r}.safetensors") for r in range(2)]
    assert int(one["world_size"]) == 1 and [int(r["world_size"]) for r in ranks] == [2, 2]
    assert int(one["steps"]) == EPOCHS and all(int(r["steps"]) == EPOCHS for r in ranks)
    # Each rank saw its own half of the training rows, and the two halves are all of them.
    rows = torch.from_numpy(np.stack([data.user[split.train], data.item[split.train]], 1))
    assert all(len(r["pairs"]) == len(rows) // 2 for r in ranks)
    assert torch.equal(torch.cat([r["pairs"] for r in ranks]).unique(dim=0, return_counts=True)[1].sort().values,
                       rows.unique(dim=0, return_counts=True)[1].sort().values)
    assert torch.equal(torch.cat([r["pairs"] for r in ranks]).unique(dim=0), rows.unique(dim=0))
    names = [k for k in one if k.startswith("weight.")]
    assert names and all(torch.equal(ranks[0][k], ranks[1][k]) for k in names)
    # Both fits start from the same weights and the fit moves them by far more than the tolerance ...
    assert all(torch.equal(one[f"initial.{k[7:]}"], ranks[0][f"initial.{k[7:]}"]) for k in names)
    moved = max(float((one[k] - one[f"initial.{k[7:]}"]).abs().max()) for k in names)
    assert moved > MOVED, moved
    # ... yet 2 processes end where 1 process does.
    gaps = {k[7:]: float((ranks[0][k] - one[k]).abs().max()) for k in names}
    assert max(gaps.values()) <= TOLERANCE, gaps
    # The main process finished the stage: it has the best epoch's weights back (the stage's artifacts),
    # and they too are those the single process saved.
    out = double / "out"
    saved, single_saved = load_file(out / "model.safetensors"), load_file(single / "out" / "model.safetensors")
    best = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(best[f"model.{k}"], v) for k, v in saved.items())
    assert max(float((v - single_saved[k]).abs().max()) for k, v in saved.items()) <= TOLERANCE
    assert (out / "user_preferences.safetensors").is_file() and artifacts.metrics["test/num_users"] == data.num_users
