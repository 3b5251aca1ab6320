"""The preference stage under 2-process CPU DDP (gloo, ``ddp_spawn`` inside pytest): the ranks train on
different shards yet end with identical weights, and rank 0 writes the artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file, save_file

from pmg.config import load_config
from pmg.data import read_dataset
from pmg.data.split import temporal_split
from pmg.preference.stage import PreferenceConfig, train_preferences


class _SaveRankWeights(Callback):
    """In each worker: the first training batch's users and the final weights, one file per rank.

    Module-level, with plain attributes, so ``ddp_spawn`` can pickle it.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.first_users: torch.Tensor | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_users is None:
            self.first_users = batch["users"].clone()

    def on_train_end(self, trainer, pl_module) -> None:
        tensors = {f"weight.{k}": v.detach().cpu().contiguous() for k, v in pl_module.model.state_dict().items()}
        tensors["first_users"] = self.first_users
        tensors["world_size"] = torch.tensor(trainer.world_size)
        save_file(tensors, str(Path(self.folder) / f"rank{trainer.global_rank}.safetensors"))


# Two spawned workers each import torch + lightning: ~160 s on the shared 2-core machine.
@pytest.mark.slow
def test_two_process_gloo_ddp_fit(small_catalog: Path, tmp_path: Path) -> None:
    data = read_dataset(small_catalog)
    config = load_config(PreferenceConfig, None, [
        "features.visual=pixels", "features.textual=words", f"features.cache_dir={tmp_path / 'features'}",
        "model.embedding_dim=16", "model.projection_hidden_dim=32", "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false", "batch_size=256",
        "trainer.strategy=ddp_spawn", "trainer.accelerator=cpu", "trainer.devices=2",
    ])
    out = tmp_path / "out"
    artifacts = train_preferences(config, data, temporal_split(data), out, callbacks=[_SaveRankWeights(str(tmp_path))])
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    assert int(ranks[0]["world_size"]) == 2
    # Each rank saw its own shard of the training rows ...
    assert not torch.equal(ranks[0]["first_users"], ranks[1]["first_users"])
    # ... and gradient averaging kept the replicas identical.
    names = [k for k in ranks[0] if k.startswith("weight.")]
    assert names and all(torch.equal(ranks[0][k], ranks[1][k]) for k in names)
    # The main process finished the stage: it has the trained weights back and wrote the artifacts.
    saved = load_file(out / "model.safetensors")
    assert (out / "user_preferences.safetensors").is_file() and (out / "checkpoints" / "best.ckpt").is_file()
    assert artifacts.metrics["epochs"] == 2 and artifacts.metrics["test/num_users"] == data.num_users
    # Rank 0's last checkpoint is the replicas' final state; the artifacts come from the best one.
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    best = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(last[f"model.{k[7:]}"], ranks[0][k]) for k in names)
    assert all(torch.equal(best[f"model.{k}"], v) for k, v in saved.items())
