"""history_weights / weighted_history: normalisation, similarity preference, temperature, batching, masks."""

from __future__ import annotations

import pytest
import torch

from prefgraph import history_weights, weighted_history


def test_weights_sum_to_one_and_favour_similar_items():
    reference = torch.tensor([1.0, 0.0, 0.0])
    history = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.1, 0.0], [-1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    weights = history_weights(history, reference, temperature=0.1)
    assert weights.shape == (4,)
    assert weights.sum().item() == pytest.approx(1.0)
    # ranking follows cosine similarity: item 1 (~1.0) > item 3 (0.71) > item 0 (0) > item 2 (-1)
    assert weights.argsort(descending=True).tolist() == [1, 3, 0, 2]
    # cosine, not dot product: scaling a history item does not change its weight
    scaled = history.clone()
    scaled[3] *= 10
    torch.testing.assert_close(history_weights(scaled, reference, 0.1), weights)


def test_temperature_controls_sharpness():
    reference = torch.randn(8, generator=torch.Generator().manual_seed(0))
    history = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    sharp = history_weights(history, reference, temperature=0.01)
    soft = history_weights(history, reference, temperature=100.0)
    assert sharp.max() > 0.99
    torch.testing.assert_close(soft, torch.full((6,), 1 / 6), atol=1e-2, rtol=0)


def test_batched_with_padding_mask_matches_unbatched():
    gen = torch.Generator().manual_seed(0)
    history = torch.randn(3, 5, 4, generator=gen)
    reference = torch.randn(3, 4, generator=gen)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False], [False] * 5])
    weights = history_weights(history, reference, 0.2, mask)
    assert weights.shape == (3, 5)
    torch.testing.assert_close(weights[0], history_weights(history[0], reference[0], 0.2))
    torch.testing.assert_close(weights[1, :3], history_weights(history[1, :3], reference[1], 0.2))
    assert weights[1, 3:].abs().sum() == 0
    assert weights[2].abs().sum() == 0  # a user without history gets no weight (not NaN)
    summary = weighted_history(history, reference, 0.2, mask)
    assert summary.shape == (3, 4)
    torch.testing.assert_close(summary[1], (weights[1, :3, None] * history[1, :3]).sum(0))


def test_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        history_weights(torch.randn(3, 4), torch.randn(4), temperature=0.0)
    with pytest.raises(ValueError, match="does not match"):
        history_weights(torch.randn(3, 4), torch.randn(5))
    with pytest.raises(ValueError, match="does not match"):
        history_weights(torch.randn(2, 3, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="empty"):
        history_weights(torch.randn(0, 4), torch.randn(4))
    with pytest.raises(ValueError, match="mask"):
        history_weights(torch.randn(3, 4), torch.randn(4), mask=torch.ones(2, dtype=torch.bool))
