"""PersonalizationReward (preference-vector cosine), its linear map, and the ranking-model reward."""

from __future__ import annotations

import math

import pytest
import torch

from prefquant import fit_linear_map
from prefreward import PersonalizationReward, RankingPersonalizationReward


def test_cosine_reward_bounded_and_ordered() -> None:
    torch.manual_seed(0)
    preference = torch.randn(4, 6)
    reward = PersonalizationReward(6, 6)  # identity map
    aligned = reward(preference * 3.0, preference)
    opposite = reward(-preference, preference)
    torch.testing.assert_close(aligned, torch.ones(4))
    torch.testing.assert_close(opposite, -torch.ones(4))
    unit = PersonalizationReward(6, 6, unit_interval=True)(torch.randn(4, 6), preference)
    assert bool(((unit >= 0) & (unit <= 1)).all())


def test_given_map_and_frozen_by_default() -> None:
    weight = torch.randn(3, 5)
    reward = PersonalizationReward(5, 3, weight=weight)
    content = torch.randn(2, 5, requires_grad=True)
    preference = content.detach() @ weight.T
    values = reward(content, preference)
    torch.testing.assert_close(values, torch.ones(2))
    (values * torch.tensor([1.0, -1.0])).sum().backward()
    assert content.grad is not None and reward.projection.weight.grad is None
    with pytest.raises(ValueError):
        PersonalizationReward(5, 3, weight=torch.randn(5, 3))


def test_learned_map_improves_agreement() -> None:
    """A trainable map learns to align content with preferences that are a hidden linear map of it."""
    torch.manual_seed(0)
    hidden = torch.randn(4, 8)
    content = torch.randn(64, 8)
    preference = content @ hidden.T
    reward = PersonalizationReward(8, 4, trainable=True)
    optimiser = torch.optim.Adam(reward.parameters(), lr=0.05)
    before = reward(content, preference).mean().item()
    for _ in range(60):
        loss = -reward(content, preference).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = reward(content, preference).mean().item()
    assert after > 0.95 and after > before + 0.3, (before, after)


def test_a_fitted_content_map_is_the_rewards_weight_transposed() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(3, 6)  # [d, d_c], an nn.Linear weight
    content = torch.randn(40, 6)
    weight = fit_linear_map(content, content @ hidden.T, ridge=1e-6).T  # [d_c, d] -> [d, d_c]
    torch.testing.assert_close(weight, hidden, atol=1e-4, rtol=1e-4)
    reward = PersonalizationReward(6, 3, weight=weight)
    torch.testing.assert_close(reward(content, content @ hidden.T), torch.ones(40), atol=1e-4, rtol=1e-4)


class DotScorer(torch.nn.Module):
    """Logits = <user embedding, item embedding>."""

    def __init__(self, users: torch.Tensor) -> None:
        super().__init__()
        self.users = torch.nn.Parameter(users)

    def forward(self, user_ids: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bd,bcd->bc", self.users[user_ids], items)


def test_ranking_reward_prefers_what_the_user_would_pick() -> None:
    torch.manual_seed(0)
    users = torch.nn.functional.normalize(torch.randn(3, 5), dim=-1) * 4
    scorer = DotScorer(users)
    ids = torch.tensor([0, 1, 2])
    candidates = torch.randn(3, 4, 5)  # C = 5 with the generated item
    liked = RankingPersonalizationReward(scorer, output="probability")(ids, users.detach().clone(), candidates)
    disliked = RankingPersonalizationReward(scorer, output="probability")(ids, -users.detach().clone(), candidates)
    assert bool((liked > disliked).all()) and bool(((liked >= 0) & (liked <= 1)).all())
    # The log form is bounded: [log(floor / (1 + floor)), 0].
    floor = 1e-4
    log_reward = RankingPersonalizationReward(scorer, floor=floor)(ids, -100 * users.detach(), candidates)
    assert bool((log_reward >= math.log(floor / (1 + floor)) - 1e-6).all()) and bool((log_reward <= 0).all())
    top = RankingPersonalizationReward(scorer, floor=floor)(ids, 100 * users.detach(), candidates)
    assert bool((top > -1e-3).all())


def test_ranking_reward_gradient_moves_content_toward_the_user() -> None:
    torch.manual_seed(1)
    users = torch.randn(2, 4)
    reward = RankingPersonalizationReward(DotScorer(users))
    generated = torch.zeros(2, 4, requires_grad=True)
    candidates = torch.randn(2, 3, 4)
    optimiser = torch.optim.SGD([generated], lr=0.5)
    before = reward(torch.tensor([0, 1]), generated, candidates).detach()
    for _ in range(10):
        optimiser.zero_grad()
        (-reward(torch.tensor([0, 1]), generated, candidates).mean()).backward()
        optimiser.step()
    after = reward(torch.tensor([0, 1]), generated, candidates).detach()
    assert bool((after > before + 0.1).all()), (before, after)
    cosine = torch.nn.functional.cosine_similarity(generated.detach(), users, dim=-1)
    assert bool((cosine > 0.5).all())


def test_ranking_reward_validates_shapes() -> None:
    reward = RankingPersonalizationReward(lambda users, items: items.sum(-1)[:, :2])
    with pytest.raises(ValueError):
        reward(torch.tensor([0]), torch.randn(1, 3), torch.randn(1, 2, 3))
    with pytest.raises(ValueError):
        RankingPersonalizationReward(lambda u, i: i.sum(-1), output="rank")
