"""The optimizers and learning-rate schedule shared by step-based fits: fused Adam where torch has
it, warm-up, then constant or cosine to zero."""

from __future__ import annotations

import math

import pytest
import torch

from pmg.training import LrScheduleConfig, OptimizerConfig, build_lr_scheduler, build_optimizer


def _rates(config: LrScheduleConfig, total: int, lr: float = 0.1) -> list[float]:
    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = build_optimizer([parameter], OptimizerConfig(name="sgd", lr=lr))
    scheduler = build_lr_scheduler(optimizer, config, total)
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        parameter.sum().backward()
        optimizer.step()
        scheduler.step()
    return rates


def test_cosine_warms_up_then_decays_to_zero() -> None:
    rates = _rates(LrScheduleConfig(name="cosine", warmup_steps=4), total=20)
    assert rates[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert rates[4] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(rates[4:], rates[5:], strict=False))
    assert rates[12] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 8 / 16)))
    assert rates[-1] < 0.01


def test_constant_keeps_the_rate_after_warm_up() -> None:
    assert _rates(LrScheduleConfig(), total=5) == pytest.approx([0.1] * 5)
    assert _rates(LrScheduleConfig(warmup_steps=2), total=4) == pytest.approx([0.05, 0.1, 0.1, 0.1])


def test_bad_schedule_is_named() -> None:
    with pytest.raises(ValueError, match="lr_schedule.name 'cosin'"):
        LrScheduleConfig(name="cosin").validate()
    with pytest.raises(ValueError, match="warmup_steps"):
        LrScheduleConfig(warmup_steps=-1).validate()


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_adam_is_fused_on_cpu_and_steps_as_torch_does(name: str) -> None:
    """The fused kernel is chosen for CPU tensors, also from a parameter group given as a generator,
    and takes the same steps as torch's default implementation (up to float rounding)."""
    torch.manual_seed(0)
    start = torch.randn(5, 3)
    config = OptimizerConfig(name=name, lr=0.05, weight_decay=0.01)
    ours = torch.nn.Parameter(start.clone())
    optimizer = build_optimizer([{"params": (p for p in [ours])}], config)
    assert optimizer.param_groups[0]["fused"] is True and optimizer.param_groups[0]["params"] == [ours]
    reference = torch.nn.Parameter(start.clone())
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    reference_optimizer = cls([reference], lr=0.05, weight_decay=0.01, betas=(0.9, 0.999))
    for step in range(5):
        target = torch.randn(5, 3, generator=torch.Generator().manual_seed(step))
        for parameter, opt in ((ours, optimizer), (reference, reference_optimizer)):
            opt.zero_grad()
            ((parameter - target) ** 2).sum().backward()
            opt.step()
    assert not torch.equal(ours.detach(), start)
    torch.testing.assert_close(ours.detach(), reference.detach())
