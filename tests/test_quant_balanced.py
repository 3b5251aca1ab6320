"""Sinkhorn-balanced assignment: spreads training batches over the codes, leaves encode nearest-code."""

from __future__ import annotations

import copy

import pytest
import torch

from prefquant import ResidualQuantizer, VectorQuantizer, fit_quantizer, semantic_id_quality

pytestmark = pytest.mark.usefixtures("single_thread")


def skewed(num_rows: int = 2048, dim: int = 16, seed: int = 0) -> torch.Tensor:
    """Rows from 13 clusters, 70% of them in three dense ones: nearest-code crowds there."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.tensor([0.4, 0.2, 0.1] + [0.03] * 10)
    centres = torch.randn(13, dim, generator=gen) * 2
    labels = torch.multinomial(weights, num_rows, replacement=True, generator=gen)
    return centres[labels] + 0.5 * torch.randn(num_rows, dim, generator=gen)


def test_balanced_training_pass_spreads_codes_more_evenly_than_nearest():
    x = skewed()
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 32, dead_code_patience=None)
    vq.train()
    vq(x[:512])  # k-means init
    nearest = copy.deepcopy(vq)
    balanced = copy.deepcopy(vq)
    balanced.assignment = "sinkhorn"
    batch = x[512:1024]
    out_nearest, out_balanced = nearest(batch), balanced(batch)
    assert float(out_balanced.stats.perplexity) > float(out_nearest.stats.perplexity) + 1
    # More iterations balance harder: the most crowded code holds fewer rows.
    harder = copy.deepcopy(balanced)
    harder.sinkhorn_iters = 30
    crowded = int(torch.bincount(harder(batch).codes[:, 0], minlength=32).max())
    assert crowded < int(torch.bincount(out_nearest.codes[:, 0], minlength=32).max()) * 0.7
    # Encode is nearest-code whatever the training assignment: equal codebooks, equal codes.
    balanced.codebook.data.copy_(nearest.codebook)
    assert torch.equal(balanced.encode(x), nearest.encode(x))


def test_sinkhorn_training_lowers_collisions_of_semantic_ids():
    x = skewed()
    torch.manual_seed(0)
    results = {}
    for mode in ("nearest", "sinkhorn"):
        rq = ResidualQuantizer(16, num_levels=2, codebook_size=32, assignment=mode, dead_code_patience=20)
        fit_quantizer(rq, x, epochs=6, batch_size=256)
        codes = rq.encode(x)
        results[mode] = semantic_id_quality(codes, 32)
        assert float(((rq.decode(codes) - x) ** 2).mean()) < float(x.var(0).sum() / 16)
    assert results["sinkhorn"].collision_rate < results["nearest"].collision_rate
    assert results["sinkhorn"].perplexity[0] > results["nearest"].perplexity[0]


def test_balanced_cosine_and_no_nan_at_extreme_temperatures():
    x = skewed(512)
    for temperature in (1e-4, 5.0):
        vq = VectorQuantizer(16, 8, use_cosine=True, assignment="sinkhorn", sinkhorn_temperature=temperature)
        vq.train()
        for batch in x.split(128):
            out = vq(batch)
        assert torch.isfinite(vq.codebook).all() and torch.isfinite(out.loss)


def test_assignment_options_are_validated_and_saved(tmp_path):
    with pytest.raises(ValueError, match="assignment must be 'nearest' or 'sinkhorn'"):
        ResidualQuantizer(4, 2, 4, assignment="balanced")
    with pytest.raises(ValueError, match="sinkhorn_iters"):
        VectorQuantizer(4, 4, sinkhorn_iters=0)
    with pytest.raises(ValueError, match="sinkhorn_temperature"):
        VectorQuantizer(4, 4, sinkhorn_temperature=0.0)
    rq = ResidualQuantizer(4, 2, 4, assignment="sinkhorn", sinkhorn_iters=5, sinkhorn_temperature=0.2)
    fit_quantizer(rq, torch.randn(64, 4), epochs=1, batch_size=32)
    rq.save_pretrained(tmp_path / "rq")
    loaded = ResidualQuantizer.from_pretrained(tmp_path / "rq")
    assert loaded.config() == rq.config()
    assert all(level.assignment == "sinkhorn" and level.sinkhorn_iters == 5 for level in loaded.levels)
