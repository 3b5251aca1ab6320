"""CombinedReward: weighted sum of named components with per-component values for logging."""

from __future__ import annotations

import pytest
import torch

from prefreward import CombinedReward, PersonalizationReward


def test_combine_weights_and_logs() -> None:
    combined = CombinedReward({"consistency": 1.0, "personalization": 0.5, "off": 0.0})
    values = {"consistency": torch.tensor([0.2, 0.4]), "personalization": torch.tensor([1.0, -1.0])}
    total, parts = combined.combine(values)
    torch.testing.assert_close(total, torch.tensor([0.7, -0.1]))
    assert set(parts) == {"consistency", "personalization"}
    with pytest.raises(KeyError):
        combined.combine({"consistency": torch.zeros(2)})
    with pytest.raises(ValueError):
        combined.combine({"consistency": torch.zeros(2), "personalization": torch.zeros(3)})


def test_forward_routes_keyword_inputs_and_keeps_gradients() -> None:
    personalization = PersonalizationReward(3, 3)

    def brightness(images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(1, 2, 3)).clamp(0, 1)

    combined = CombinedReward({"brightness": 2.0, "personalization": 1.0}, {"brightness": brightness, "personalization": personalization})
    images = torch.rand(2, 3, 4, 4, requires_grad=True)
    content = torch.randn(2, 3, requires_grad=True)
    preference = torch.randn(2, 3)
    total, parts = combined(images=images, content=content, preference=preference)
    torch.testing.assert_close(total, 2.0 * brightness(images) + personalization(content, preference))
    assert all(not value.requires_grad for value in parts.values())  # logging copies are detached
    total.sum().backward()
    assert images.grad is not None and content.grad is not None
    # nn.Module components are registered (move with .to, appear in state_dict).
    assert "modules_by_name.personalization.projection.weight" in combined.state_dict()


def test_config_errors() -> None:
    with pytest.raises(ValueError):
        CombinedReward({})
    with pytest.raises(ValueError):
        CombinedReward({"a": 1.0}, {"b": lambda images: images})
    with pytest.raises(KeyError):
        CombinedReward({"a": 1.0})(images=torch.zeros(1))
