"""Diffusion policy-gradient pieces: truncated reward backprop, DDIM step Gaussian, DDPO loss."""

from __future__ import annotations

import pytest
import torch

from prefreward import (
    ddim_step_mean_std,
    ddpo_loss,
    reward_backprop_loss,
    step_log_prob,
    truncated_backprop_loop,
)


def test_reward_backprop_loss_is_negative_mean() -> None:
    rewards = torch.tensor([0.2, 0.6], requires_grad=True)
    loss = reward_backprop_loss(rewards)
    assert loss.item() == pytest.approx(-0.4)
    loss.backward()
    torch.testing.assert_close(rewards.grad, torch.tensor([-0.5, -0.5]))
    with pytest.raises(ValueError):
        reward_backprop_loss(torch.zeros(2, 2))


@pytest.mark.parametrize("k", [0, 1, 3, 5, 9])
def test_truncated_loop_backprops_through_only_the_last_k_steps(k: int) -> None:
    """Steps x -> w·x: the full chain gives d(w^T x0)/dw = T w^(T-1) x0; keeping K steps gives K w^(T-1) x0."""
    steps_total = 5
    w = torch.tensor(1.1, requires_grad=True)
    x0 = torch.tensor([2.0])
    out = truncated_backprop_loop([lambda x: w * x] * steps_total, x0, backprop_last_k=k)
    torch.testing.assert_close(out.detach(), (1.1**steps_total) * x0)
    kept = min(k, steps_total)
    if kept == 0:
        assert not out.requires_grad
        return
    out.sum().backward()
    torch.testing.assert_close(w.grad, torch.tensor(kept * 1.1 ** (steps_total - 1) * 2.0))


def test_truncated_loop_trains_a_toy_denoiser_toward_a_rewarded_colour() -> None:
    """A 'denoiser' that pulls latents toward a learnable colour; reward backprop through the last
    2 of 6 steps moves the colour to red."""
    torch.manual_seed(0)
    colour = torch.tensor([0.2, 0.2, 0.8], requires_grad=True)
    optimiser = torch.optim.Adam([colour], lr=0.05)
    target = torch.tensor([1.0, 0.0, 0.0])

    def step(x: torch.Tensor) -> torch.Tensor:
        return x + 0.5 * (colour.view(1, 3, 1, 1) - x)

    for _ in range(25):
        noise = torch.rand(2, 3, 4, 4)
        images = truncated_backprop_loop([step] * 6, noise, backprop_last_k=2)
        rewards = -((images.mean(dim=(2, 3)) - target) ** 2).sum(dim=1)
        optimiser.zero_grad()
        reward_backprop_loss(rewards).backward()
        optimiser.step()
    assert colour[0] > 0.7 and colour[2] < 0.3, colour


def test_step_log_prob_matches_normal_density_and_flows_to_the_mean() -> None:
    torch.manual_seed(0)
    mean = torch.randn(3, 2, 4, 4, requires_grad=True)
    std = torch.tensor(0.3)
    sample = (mean + std * torch.randn_like(mean)).detach()
    normal = torch.distributions.Normal(mean, std)
    torch.testing.assert_close(step_log_prob(sample, mean, std, reduction="sum"), normal.log_prob(sample).flatten(1).sum(1))
    torch.testing.assert_close(step_log_prob(sample, mean, 0.3), normal.log_prob(sample).flatten(1).mean(1))
    step_log_prob(sample, mean, std).sum().backward()
    assert mean.grad is not None and mean.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        step_log_prob(sample, mean, 0.0)


def test_ddim_step_mean_std_matches_diffusers() -> None:
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
    scheduler.set_timesteps(10)
    torch.manual_seed(0)
    sample, noise_pred, variance_noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    timestep = int(scheduler.timesteps[3])
    previous = timestep - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    eta = 0.7
    expected = scheduler.step(noise_pred, timestep, sample, eta=eta, variance_noise=variance_noise).prev_sample
    mean, std = ddim_step_mean_std(sample, noise_pred, scheduler.alphas_cumprod[timestep], scheduler.alphas_cumprod[previous], eta)
    torch.testing.assert_close(mean + std * variance_noise, expected, atol=1e-5, rtol=1e-5)
    assert float(std) > 0
    _, deterministic = ddim_step_mean_std(sample, noise_pred, scheduler.alphas_cumprod[timestep], scheduler.alphas_cumprod[previous], 0.0)
    assert float(deterministic) == 0.0


def test_ddpo_gradient_favours_higher_advantage_samples() -> None:
    old = torch.randn(2, 3)
    new = old.clone().requires_grad_(True)
    loss, stats = ddpo_loss(new, old, torch.tensor([1.0, -1.0]), clip_eps=0.2)
    loss.backward()
    # Gradient descent raises the log-probability of the good trajectory's steps, lowers the bad one's.
    assert torch.all(new.grad[0] < 0) and torch.all(new.grad[1] > 0)
    assert stats["clip_fraction"].item() == 0.0 and stats["approx_kl"].item() == 0.0


def test_ddpo_clipping_stops_pushing_past_the_trust_region() -> None:
    old = torch.zeros(2, 2)
    new = torch.tensor([[0.5, 0.5], [-0.5, -0.5]], requires_grad=True)  # ratios e^0.5 and e^-0.5
    loss, stats = ddpo_loss(new, old, torch.tensor([1.0, -1.0]), clip_eps=0.1)
    loss.backward()
    assert stats["clip_fraction"].item() == 1.0
    assert torch.all(new.grad == 0)  # both already moved beyond the clip range in the advantage's direction
    torch.testing.assert_close(loss, torch.tensor(-(1.1 - 0.9) / 2))
    with pytest.raises(ValueError):
        ddpo_loss(new, old, torch.zeros(3))


def _gaussian_step_logprobs(samples: torch.Tensor, mu: torch.Tensor, std: float) -> torch.Tensor:
    """samples [B, T] from N(mu, std) → per-step log-probabilities [B, T] (one Gaussian step per column)."""
    batch, steps = samples.shape
    return torch.stack([step_log_prob(samples[:, t : t + 1], mu.expand(batch, 1), std) for t in range(steps)], dim=1)


def test_ddpo_moves_a_gaussian_policy_toward_reward() -> None:
    """Each 'denoising step' samples x ~ N(mu, 0.5); reward is -(x - 2)^2. DDPO moves mu toward 2."""
    torch.manual_seed(0)
    mu = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.Adam([mu], lr=0.1)
    std = 0.5
    for _ in range(30):
        with torch.no_grad():
            samples = mu + std * torch.randn(16, 2)  # [B, T]: 2 steps per trajectory
            rewards = -((samples.mean(dim=1) - 2.0) ** 2)
            advantages = (rewards - rewards.mean()) / (rewards.std() + 1e-6)
        old = _gaussian_step_logprobs(samples, mu, std).detach()
        for _ in range(2):
            loss, _ = ddpo_loss(_gaussian_step_logprobs(samples, mu, std), old, advantages, clip_eps=0.2)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    assert mu.item() > 1.2, mu
