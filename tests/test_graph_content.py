"""prefgraph content preferences: principal components of item features and weighted history means."""

from __future__ import annotations

import pytest
import torch

from prefgraph import InteractionGraph, content_preferences, principal_components

# 4 users, 5 items: user 3 has no training edge (cold start)
USERS = torch.tensor([0, 0, 1, 1, 2])
ITEMS = torch.tensor([0, 1, 1, 2, 3])


def test_principal_components_match_the_covariance_eigenvectors():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(50, 6, generator=generator) * torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    mask = torch.ones(50, dtype=torch.bool)
    mask[7] = False
    components = principal_components(features, mask, 3)
    assert components.shape == (50, 3)
    assert torch.equal(components[7], torch.zeros(3))  # a missing item sits at the mean
    present = features[mask].double()
    centred = present - present.mean(0)
    eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred)
    top = eigenvectors[:, eigenvalues.argsort(descending=True)[:3]]
    # the same subspace: each component is a top eigenvector up to sign
    projected = (centred @ top).float()
    torch.testing.assert_close(components[mask].abs(), projected.abs(), atol=1e-4, rtol=1e-4)
    # variance falls from the first component to the last
    variances = components[mask].var(0)
    assert variances[0] > variances[1] > variances[2]
    with pytest.raises(ValueError, match="dim must be in"):
        principal_components(features, mask, 7)


def test_content_preferences_are_weighted_history_means_with_cold_start_rules():
    vectors = torch.arange(10, dtype=torch.float32).reshape(5, 2)  # item i -> [2i, 2i + 1]
    weights = torch.tensor([3.0, 1.0, 0.0, 0.0, 2.0])  # user 1's weights are all 0
    graph = InteractionGraph(USERS, ITEMS, 4, 5, edge_weight=weights)
    prefs = content_preferences(graph, {"visual": vectors})
    out = prefs["visual"]
    torch.testing.assert_close(out[0], (3 * vectors[0] + 1 * vectors[1]) / 4)
    torch.testing.assert_close(out[1], (vectors[1] + vectors[2]) / 2)  # all-zero weights: the plain mean
    torch.testing.assert_close(out[2], vectors[3])
    torch.testing.assert_close(out[3], out[:3].mean(0))  # cold, no history: the prior
    assert prefs.cold_start.tolist() == [False, False, False, True]
    assert prefs.from_prior.tolist() == [False, False, False, True]
    # a cold-start user's own items fold in; a warm user's extra pair is ignored
    folded = content_preferences(graph, {"visual": vectors}, cold_start_history=(torch.tensor([3, 3, 0]), torch.tensor([4, 2, 4])))
    torch.testing.assert_close(folded["visual"][3], (vectors[4] + vectors[2]) / 2)
    torch.testing.assert_close(folded["visual"][0], out[0])
    assert folded.from_prior.tolist() == [False] * 4
    # binary graph: every edge counts alike
    torch.testing.assert_close(content_preferences(InteractionGraph(USERS, ITEMS, 4, 5), {"visual": vectors})["visual"][0],
                               (vectors[0] + vectors[1]) / 2)
    with pytest.raises(ValueError, match="must be"):
        content_preferences(graph, {"visual": vectors[:4]})
