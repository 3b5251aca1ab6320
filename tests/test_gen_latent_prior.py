"""prefgen's latent prior: the fit and its file (how the image adapter uses it: tests/test_gen_image_adapter.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prefgen import (
    AdapterFileError,
    LatentPrior,
    fit_latent_prior,
)
from prefgen.latent_prior import LATENT_PRIOR_FILE


def _one_hot(codes: torch.Tensor, per_level: int) -> torch.Tensor:
    """[U, L] codes → [U, L * per_level] counts, as a user's prompt holds one token per level."""
    out = torch.zeros(codes.shape[0], codes.shape[1] * per_level)
    for level in range(codes.shape[1]):
        out[torch.arange(codes.shape[0]), level * per_level + codes[:, level]] = 1
    return out


def test_the_fit_recovers_an_additive_per_token_signal_and_shrinks_with_the_ridge() -> None:
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 8, (400, 3), generator=generator)
    counts = _one_hot(codes, 8)
    truth = torch.randn(24, 4, generator=generator)
    targets = counts @ truth + 5.0 + 0.05 * torch.randn(400, 4, generator=generator)
    prior = fit_latent_prior(counts, targets, ridge=1e-3, scale=2.0)
    assert (prior.num_tokens, prior.channels, prior.scale) == (24, 4, 2.0)
    centred = targets - targets.mean(dim=0)
    explained = 1 - float(((counts @ prior.rows - centred) ** 2).sum() / (centred**2).sum())
    assert explained > 0.99
    torch.testing.assert_close(prior.offsets(counts[:3]), 2.0 * counts[:3] @ prior.rows)
    # A large ridge pulls every row towards zero; a shuffled target leaves little to explain.
    assert float(fit_latent_prior(counts, targets, ridge=1e4).rows.norm()) < 0.1 * float(prior.rows.norm())
    shuffled = fit_latent_prior(counts, targets[torch.randperm(400, generator=generator)], ridge=1.0)
    assert float(shuffled.rows.norm()) < 0.5 * float(prior.rows.norm())


def test_a_reduced_rank_prior_moves_along_the_direction_the_tokens_predict() -> None:
    generator = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 6, (300, 2), generator=generator)
    counts = _one_hot(codes, 6)
    direction = torch.tensor([0.6, 0.0, 0.8, 0.0])
    # The tokens predict a strong shift along one direction; the other channels are noise.
    targets = (counts @ torch.randn(12, generator=generator))[:, None] * direction + 0.3 * torch.randn(300, 4, generator=generator)
    full = fit_latent_prior(counts, targets, ridge=1.0)
    one = fit_latent_prior(counts, targets, ridge=1.0, rank=1)
    assert torch.linalg.matrix_rank(one.rows).item() == 1 and torch.linalg.matrix_rank(full.rows).item() == 4
    row_direction = one.rows[one.rows.norm(dim=1).argmax()]
    assert abs(float(torch.nn.functional.cosine_similarity(row_direction, direction, dim=0))) > 0.98
    assert torch.equal(fit_latent_prior(counts, targets, ridge=1.0, rank=4).rows, full.rows)
    with pytest.raises(ValueError, match="rank"):
        fit_latent_prior(counts, targets, rank=0)


def test_clear_errors_for_bad_inputs_and_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="same U"):
        fit_latent_prior(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="no users"):
        fit_latent_prior(torch.zeros(0, 4), torch.zeros(0, 4))
    with pytest.raises(ValueError, match="ridge"):
        fit_latent_prior(torch.zeros(2, 4), torch.zeros(2, 4), ridge=0.0)
    with pytest.raises(ValueError, match="scale"):
        LatentPrior(torch.zeros(2, 4), scale=-1.0)
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        LatentPrior(torch.zeros(2, 4)).offsets(torch.zeros(1, 3))
    saved = LatentPrior(torch.randn(6, 4), scale=1.5).save(tmp_path / LATENT_PRIOR_FILE)
    loaded = LatentPrior.load(saved)
    assert loaded.scale == 1.5 and loaded.rows.shape == (6, 4)
    saved.write_bytes(saved.read_bytes()[:40])
    with pytest.raises(AdapterFileError, match="latent_prior"):
        LatentPrior.load(saved)
