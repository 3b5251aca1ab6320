"""Group-relative advantages and the GRPO loss (clipped ratio + k3 KL to a reference)."""

from __future__ import annotations

import pytest
import torch

from prefreward import group_relative_advantages, grpo_loss


def test_advantages_are_standardised_per_group() -> None:
    torch.manual_seed(0)
    rewards = torch.randn(5, 8) * 3 + 2
    advantages = group_relative_advantages(rewards)
    torch.testing.assert_close(advantages.mean(dim=1), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(advantages.std(dim=1), torch.ones(5), atol=1e-3, rtol=0)
    # Order within a group is kept: the best sample gets the largest advantage.
    assert torch.equal(advantages.argmax(dim=1), rewards.argmax(dim=1))
    torch.testing.assert_close(group_relative_advantages(rewards, scale_by_std=False), rewards - rewards.mean(1, keepdim=True))


def test_constant_and_single_sample_groups_give_zero_not_nan() -> None:
    rewards = torch.tensor([[0.7, 0.7, 0.7], [0.0, 1.0, 2.0]])
    advantages = group_relative_advantages(rewards)
    assert torch.isfinite(advantages).all()
    assert torch.equal(advantages[0], torch.zeros(3))
    single = group_relative_advantages(torch.tensor([[1.0], [5.0]]))
    assert torch.equal(single, torch.zeros(2, 1))
    with pytest.raises(ValueError):
        group_relative_advantages(torch.zeros(4))


def _logprobs(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(*shape, 10, generator=generator), dim=-1)[..., 0]


def test_zero_advantage_identical_policies_give_zero_loss() -> None:
    logprobs = _logprobs((2, 3, 5), 0).requires_grad_(True)
    mask = torch.ones(2, 3, 5)
    loss, stats = grpo_loss(logprobs, logprobs.detach(), logprobs.detach(), torch.zeros(2, 3), mask)
    assert loss.item() == 0.0 and stats["policy_loss"].item() == 0.0 and stats["kl"].item() == 0.0
    assert stats["clip_fraction"].item() == 0.0 and stats["ratio_mean"].item() == pytest.approx(1.0)


def test_kl_is_non_negative_k3_and_zero_only_when_equal() -> None:
    policy = _logprobs((3, 4, 6), 1)
    reference = _logprobs((3, 4, 6), 2)
    mask = torch.ones(3, 4, 6)
    _, stats = grpo_loss(policy, policy, reference, torch.zeros(3, 4), mask, kl_coef=0.1)
    expected = (torch.exp(reference - policy) - (reference - policy) - 1).mean()
    torch.testing.assert_close(stats["kl"], expected)
    assert stats["kl"].item() > 0
    # With zero advantages the loss is exactly the weighted KL.
    loss, _ = grpo_loss(policy, policy, reference, torch.zeros(3, 4), mask, kl_coef=0.1)
    torch.testing.assert_close(loss, 0.1 * expected)


def test_clipping_engages_and_stops_the_gradient() -> None:
    old = _logprobs((1, 2, 4), 3)
    new = (old + torch.log(torch.tensor(1.5))).requires_grad_(True)  # ratio 1.5 > 1 + 0.2
    mask = torch.ones(1, 2, 4)
    advantages = torch.tensor([[1.0, -1.0]])
    loss, stats = grpo_loss(new, old, new.detach(), advantages, mask, clip_eps=0.2, kl_coef=0.0)
    # Positive advantage with a ratio above 1 + eps: clipped (no gradient); negative: not clipped.
    assert stats["clip_fraction"].item() == pytest.approx(0.5)
    loss.backward()
    assert torch.all(new.grad[0, 0] == 0)
    assert torch.all(new.grad[0, 1] > 0)  # descending the loss lowers the bad completion's logprob
    # A tiny ratio change stays inside the clip range.
    _, inside = grpo_loss(old + 0.01, old, old, advantages, mask, clip_eps=0.2)
    assert inside["clip_fraction"].item() == 0.0


def test_mask_and_length_normalisation() -> None:
    logprobs = _logprobs((1, 2, 4), 4)
    old = logprobs - 0.05
    mask = torch.tensor([[[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]])
    advantages = torch.tensor([[1.0, -0.5]])
    loss, _ = grpo_loss(logprobs, old, logprobs, advantages, mask)
    changed = logprobs.clone()
    changed[0, 0, 2:] = -50.0  # masked tokens cannot matter
    changed_old = old.clone()
    changed_old[0, 0, 2:] = 3.0
    loss_changed, _ = grpo_loss(changed, changed_old, changed, advantages, mask)
    torch.testing.assert_close(loss, loss_changed)
    token_loss, _ = grpo_loss(logprobs, old, logprobs, advantages, mask, length_normalization="token")
    assert not torch.allclose(loss, token_loss)
    with pytest.raises(ValueError):
        grpo_loss(logprobs, old, logprobs, torch.zeros(2), mask)


def test_grpo_steps_make_a_rewarded_token_more_likely() -> None:
    """A toy policy over 4 tokens, rewarded for emitting token 0, learns to prefer it."""
    torch.manual_seed(0)
    logits = torch.zeros(4, requires_grad=True)
    reference = torch.zeros(4)
    optimiser = torch.optim.Adam([logits], lr=0.1)
    batch, group, length = 4, 8, 3
    for _ in range(15):
        with torch.no_grad():
            tokens = torch.distributions.Categorical(logits=logits).sample((batch, group, length))
            rewards = (tokens == 0).float().mean(dim=-1)  # [B, G]
            advantages = group_relative_advantages(rewards)
            old = torch.log_softmax(logits, -1)[tokens]
        for _ in range(2):  # two updates per sample batch: the ratio leaves 1
            new = torch.log_softmax(logits, -1)[tokens]
            ref = torch.log_softmax(reference, -1)[tokens]
            loss, _ = grpo_loss(new, old, ref, advantages, torch.ones_like(new), kl_coef=0.01)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    assert logits.softmax(-1)[0].item() > 0.6
