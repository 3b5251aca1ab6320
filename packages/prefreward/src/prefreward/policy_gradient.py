"""Policy-gradient pieces for fine-tuning preference-token generators with rewards.

Text (a causal LM sampling G completions per prompt): ``group_relative_advantages`` and
``grpo_loss`` (GRPO: PPO-style clipped ratio on group-normalised rewards, plus a k3 KL
penalty towards a reference policy, the SFT adapter).

Images (a diffusion pipeline):

- reward backprop: the reward is differentiable w.r.t. the decoded image, so maximise it
  directly (``reward_backprop_loss``); ``truncated_backprop_loop`` keeps the graph only for
  the last K denoising steps (DRaFT-K / AlignProp), which bounds memory and is what makes
  this affordable on a real UNet;
- DDPO: treat each stochastic denoising step (DDIM with eta > 0, or DDPM) as a Gaussian
  policy; ``ddim_step_mean_std`` gives the step's mean/std, ``step_log_prob`` the log
  density of the sample taken, ``ddpo_loss`` the per-step clipped likelihood-ratio loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

__all__ = [
    "group_relative_advantages",
    "grpo_loss",
    "reward_backprop_loss",
    "truncated_backprop_loop",
    "ddim_step_mean_std",
    "step_log_prob",
    "ddpo_loss",
]


def group_relative_advantages(rewards: torch.Tensor, eps: float = 1e-4, scale_by_std: bool = True) -> torch.Tensor:
    """GRPO advantages: rewards [B, G] (G samples per prompt) → [B, G].

    Each group is centred on its mean and, with ``scale_by_std``, divided by its std + eps
    (unbiased std, as in the GRPO reference code). A constant group gets zero advantages
    (no NaN): it carries no signal about which sample is better.
    """
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [B, G], got {tuple(rewards.shape)}")
    rewards = rewards.float()
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale_by_std:
        return centred
    # A group of one has no spread; correction=0 there avoids the NaN of an unbiased std.
    std = rewards.std(dim=1, keepdim=True, correction=1 if rewards.shape[1] > 1 else 0)
    return centred / (std + eps)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp_min(1.0)
    return (values * mask).sum(dim=dim) / mask.sum(dim=dim).clamp_min(1.0)


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    kl_coef: float = 0.04,
    length_normalization: str = "sequence",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO objective as a loss to minimise.

    Args:
        logprobs: [B, G, T] per-token log-probabilities of the sampled completions under the
            current policy (with grad).
        old_logprobs: [B, G, T] the same under the policy that sampled them (no grad); equal to
            ``logprobs.detach()`` on the first update after sampling.
        ref_logprobs: [B, G, T] the same under the frozen reference policy (the SFT adapter).
        advantages: [B, G] from ``group_relative_advantages``; one value per completion.
        mask: [B, G, T] 1 for completion tokens, 0 for prompt/padding.
        clip_eps: PPO clip range of the ratio ``exp(logprobs - old_logprobs)``.
        kl_coef: weight β of the KL penalty towards the reference.
        length_normalization: ``"sequence"`` (mean over each completion's tokens, then over
            completions: the GRPO paper) or ``"token"`` (mean over all tokens of the batch,
            which does not favour short completions).

    Returns:
        ``(loss, stats)``: the scalar loss = policy term + β·KL, and detached scalars
        ``policy_loss``, ``kl`` (mean k3 estimate, ≥ 0), ``clip_fraction`` (share of tokens
        whose ratio was clipped in the direction that mattered), ``ratio_mean``.

    The KL uses the k3 estimator ``exp(r - p) - (r - p) - 1`` (r = ref, p = policy logprob):
    unbiased for KL(π‖π_ref) under samples from π, always ≥ 0, zero when the policies agree.
    """
    if logprobs.ndim != 3:
        raise ValueError(f"logprobs must be [B, G, T], got {tuple(logprobs.shape)}")
    for name, tensor in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs), ("mask", mask)):
        if tensor.shape != logprobs.shape:
            raise ValueError(f"{name} must match logprobs {tuple(logprobs.shape)}, got {tuple(tensor.shape)}")
    if advantages.shape != logprobs.shape[:2]:
        raise ValueError(f"advantages must be [B, G] = {tuple(logprobs.shape[:2])}, got {tuple(advantages.shape)}")
    if length_normalization not in ("sequence", "token"):
        raise ValueError(f"length_normalization must be 'sequence' or 'token', got {length_normalization!r}")
    mask = mask.to(logprobs.dtype)
    advantage = advantages.to(logprobs.dtype).unsqueeze(-1)  # broadcast over tokens
    ratio = torch.exp(logprobs - old_logprobs.detach())
    unclipped = ratio * advantage
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantage
    policy_per_token = -torch.minimum(unclipped, clipped)
    log_ratio_ref = ref_logprobs.detach() - logprobs
    kl_per_token = torch.exp(log_ratio_ref) - log_ratio_ref - 1.0
    per_token = policy_per_token + kl_coef * kl_per_token
    if length_normalization == "sequence":
        def reduce(values: torch.Tensor) -> torch.Tensor:
            return _masked_mean(values, mask, dim=-1).mean()
    else:
        def reduce(values: torch.Tensor) -> torch.Tensor:
            return _masked_mean(values, mask)
    loss = reduce(per_token)
    with torch.no_grad():
        was_clipped = (clipped < unclipped).to(mask.dtype)  # the min picked the clipped term
        stats = {
            "policy_loss": reduce(policy_per_token).detach(),
            "kl": _masked_mean(kl_per_token, mask).detach(),
            "clip_fraction": _masked_mean(was_clipped, mask),
            "ratio_mean": _masked_mean(ratio, mask).detach(),
        }
    return loss, stats


def reward_backprop_loss(rewards: torch.Tensor) -> torch.Tensor:
    """Reward [B] (differentiable w.r.t. the generated images) → the scalar loss ``-mean``.

    Minimising it follows the reward's gradient through the decoder and the denoising steps
    that kept their graph (see ``truncated_backprop_loop``).
    """
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be [B], got {tuple(rewards.shape)}")
    return -rewards.float().mean()


def truncated_backprop_loop(
    steps: Sequence[Callable[[torch.Tensor], torch.Tensor]], latents: torch.Tensor, backprop_last_k: int
) -> torch.Tensor:
    """Run ``steps`` in order on ``latents``, keeping the autograd graph only for the last K.

    The first ``len(steps) - K`` steps run under ``no_grad`` and their output is detached,
    so memory grows with K, not with the number of steps, and gradients reach the model
    only through the last K steps (DRaFT-K). ``K = 0`` gives no gradient to the model;
    ``K >= len(steps)`` keeps the whole chain.

    Each step maps latents [B, ...] to the next latents; with a diffusers scheduler::

        def make_step(t):
            def step(x):
                noise_pred = unet(x, t, encoder_hidden_states=prompt_embeds).sample
                return scheduler.step(noise_pred, t, x).prev_sample
            return step
        latents = truncated_backprop_loop([make_step(t) for t in scheduler.timesteps], latents, k)
        images = vae.decode(latents / vae.config.scaling_factor).sample      # [-1, 1]
        loss = reward_backprop_loss(reward(images, texts))

    Returns the final latents (with a graph through the last K steps).
    """
    if backprop_last_k < 0:
        raise ValueError("backprop_last_k must be >= 0")
    first_tracked = max(len(steps) - backprop_last_k, 0)
    with torch.no_grad():
        for step in steps[:first_tracked]:
            latents = step(latents)
    latents = latents.detach()
    for step in steps[first_tracked:]:
        latents = step(latents)
    return latents


def ddim_step_mean_std(
    sample: torch.Tensor,
    noise_pred: torch.Tensor,
    alpha_prod_t: torch.Tensor | float,
    alpha_prod_prev: torch.Tensor | float,
    eta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of one DDIM step x_t → x_{t-1} for an epsilon-predicting model.

    As diffusers' ``DDIMScheduler.step`` (``clip_sample=False``, epsilon prediction):
    ``prev_sample = mean + std * noise``. ``eta=1`` is DDPM's posterior variance; ``eta=0`` is
    deterministic (std 0, no log-density: use eta > 0 for DDPO).

    Args:
        sample: x_t [B, ...]; noise_pred: the model's epsilon [B, ...].
        alpha_prod_t, alpha_prod_prev: ᾱ at t and at the previous timestep (scalars or
            tensors broadcastable to ``sample``).

    Returns:
        ``(mean [B, ...], std)`` with std broadcastable to ``sample``.
    """
    alpha_prod_t = torch.as_tensor(alpha_prod_t, dtype=sample.dtype, device=sample.device)
    alpha_prod_prev = torch.as_tensor(alpha_prod_prev, dtype=sample.dtype, device=sample.device)
    pred_original = (sample - (1 - alpha_prod_t).sqrt() * noise_pred) / alpha_prod_t.sqrt()
    variance = (1 - alpha_prod_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_prev)
    std = eta * variance.clamp_min(0).sqrt()
    direction = (1 - alpha_prod_prev - std**2).clamp_min(0).sqrt() * noise_pred
    return alpha_prod_prev.sqrt() * pred_original + direction, std


def step_log_prob(
    prev_sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float, reduction: str = "mean"
) -> torch.Tensor:
    """Log density of a Gaussian denoising step: prev_sample, mean [B, ...], std (broadcastable) → [B].

    ``reduction="sum"`` is the exact log-density of the whole latent; ``"mean"`` averages over
    the latent's elements, as DDPO's reference code does, which keeps likelihood ratios near 1
    for high-dimensional latents (pick one and keep it between sampling and training).
    ``prev_sample`` is what was sampled; it is detached: the policy's gradient flows through
    ``mean`` (and ``std``), which the current model recomputes.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    if bool((std <= 0).any()):
        raise ValueError("std must be > 0 (a deterministic step, e.g. DDIM with eta=0, has no log-density)")
    log_density = (
        -((prev_sample.detach() - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    )
    log_density = log_density.expand_as(mean).flatten(1)
    return log_density.mean(dim=1) if reduction == "mean" else log_density.sum(dim=1)


def ddpo_loss(
    logprob_new: torch.Tensor,
    logprob_old: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float = 1e-4,
    advantage_clip: float | None = 5.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DDPO's per-step clipped likelihood-ratio loss.

    Args:
        logprob_new: [B, T] ``step_log_prob`` of each sampled step under the current model (with grad).
        logprob_old: [B, T] the same at sampling time (no grad).
        advantages: [B] one per trajectory (e.g. rewards normalised per prompt), shared by its T steps.
        clip_eps: ratio clip range (DDPO uses 1e-4: each step's policy moves little).
        advantage_clip: clamp advantages to ±this (DDPO's default 5), or ``None``.

    Returns:
        ``(loss, stats)``: the mean over samples and steps of ``max(-A·r, -A·clip(r))``, and
        detached ``clip_fraction`` and ``approx_kl`` (½·mean((new - old)²)).
    """
    if logprob_new.ndim != 2 or logprob_new.shape != logprob_old.shape:
        raise ValueError(f"logprob_new and logprob_old must both be [B, T], got {tuple(logprob_new.shape)} and {tuple(logprob_old.shape)}")
    if advantages.shape != logprob_new.shape[:1]:
        raise ValueError(f"advantages must be [B] = {tuple(logprob_new.shape[:1])}, got {tuple(advantages.shape)}")
    advantage = advantages.to(logprob_new.dtype)
    if advantage_clip is not None:
        advantage = advantage.clamp(-advantage_clip, advantage_clip)
    advantage = advantage.unsqueeze(1)  # same advantage for every step of a trajectory
    log_ratio = logprob_new - logprob_old.detach()
    ratio = torch.exp(log_ratio)
    unclipped = -advantage * ratio
    clipped = -advantage * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        stats = {
            "clip_fraction": ((ratio - 1.0).abs() > clip_eps).float().mean(),
            "approx_kl": 0.5 * (log_ratio**2).mean(),
        }
    return loss, stats
