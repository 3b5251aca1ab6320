"""The preference stage with bitsandbytes' AdamW8bit: the optimizer really keeps 8-bit state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from pmg.config import load_config
from pmg.data import read_dataset
from pmg.data.split import temporal_split
from pmg.preference.stage import PreferenceConfig, train_preferences
from pmg.training import build_optimizer


class _OptimizerStateProbe(Callback):
    """Records, after training, the dtype of each parameter's first Adam moment and its size."""

    def __init__(self) -> None:
        self.states: dict[str, tuple[torch.dtype, int]] = {}
        self.optimizer_type = ""

    def on_train_end(self, trainer, pl_module) -> None:
        optimizer = trainer.optimizers[0]
        self.optimizer_type = type(optimizer).__module__ + "." + type(optimizer).__name__
        names = {id(p): n for n, p in pl_module.model.named_parameters()}
        for param, state in optimizer.state.items():
            self.states[names[id(param)]] = (state["state1"].dtype, param.numel())


def test_adamw8bit_keeps_8bit_state_for_large_tensors(small_catalog: Path, tmp_path: Path) -> None:
    data = read_dataset(small_catalog)
    # 150 users x 32 dims = 4,800 elements per user table: above bitsandbytes' 4,096-element
    # threshold under which it keeps 32-bit state.
    config = load_config(PreferenceConfig, None, [
        "features.visual=pixels", "features.textual=words", f"features.cache_dir={tmp_path / 'features'}",
        "model.embedding_dim=32", "model.projection_hidden_dim=32", "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false", "batch_size=512", "optimizer.name=bnb.AdamW8bit", "optimizer.lr=0.01",
    ])
    probe = _OptimizerStateProbe()
    artifacts = train_preferences(config, data, temporal_split(data), tmp_path / "out", callbacks=[probe])
    assert probe.optimizer_type.startswith("bitsandbytes.") and "AdamW8bit" in probe.optimizer_type
    dtype, size = probe.states["user_embeddings.id.weight"]
    assert size > 4096 and dtype == torch.uint8
    # Small tensors stay 32-bit (bitsandbytes' rule), so the probe can tell the two apart.
    assert probe.states["modality_logits"][0] == torch.float32
    assert torch.isfinite(artifacts.user_preferences["id"]).all()
    assert artifacts.metrics["best_val_score"] > 0


# CI has no GPU; where there is one, the 8-bit optimizer's CUDA kernels are checked as well.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]


@pytest.mark.parametrize("device", DEVICES)
def test_adamw8bit_learns_like_adamw(device: str) -> None:
    torch.manual_seed(0)
    target = torch.randn(128, 64, device=device)
    losses = {}
    for name in ("adamw", "bnb.AdamW8bit"):
        weight = torch.nn.Parameter(torch.zeros(128, 64, device=device))  # 8,192 elements: the 8-bit path
        optimizer = build_optimizer([weight], load_config(PreferenceConfig, None, [f"optimizer.name={name}", "optimizer.lr=0.05"]).optimizer)
        for _ in range(100):
            loss = (weight - target).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        losses[name] = float(loss.detach())
    assert losses["bnb.AdamW8bit"] < 0.1 * float(target.pow(2).mean())
    assert abs(losses["bnb.AdamW8bit"] - losses["adamw"]) < 0.05
