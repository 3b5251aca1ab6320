"""fit_linear_map: one ridge map between embedding spaces, W [k, d] with source @ W ≈ target."""

from __future__ import annotations

import pytest
import torch

from prefquant import fit_linear_map


def test_recovers_a_linear_relation_in_the_targets_dtype() -> None:
    g = torch.Generator().manual_seed(0)
    true = torch.randn(3, 8, generator=g)  # [k, d]
    source = torch.randn(40, 3, generator=g)  # [M, k]
    weight = fit_linear_map(source, source @ true, ridge=1e-8)
    assert weight.shape == (3, 8) and weight.dtype == torch.float32
    torch.testing.assert_close(weight, true, atol=1e-4, rtol=1e-4)
    assert fit_linear_map(source, (source @ true).double(), ridge=1e-8).dtype == torch.float64


def test_ridge_shrinks_the_map_and_keeps_few_examples_solvable() -> None:
    g = torch.Generator().manual_seed(1)
    source, target = torch.randn(4, 10, generator=g), torch.randn(4, 5, generator=g)  # M < k
    small, large = fit_linear_map(source, target, ridge=1e-3), fit_linear_map(source, target, ridge=10.0)
    assert torch.isfinite(small).all() and large.norm() < small.norm()


def test_mismatched_shapes_name_both() -> None:
    with pytest.raises(ValueError, match=r"\(40, 6\) and \(39, 3\)"):
        fit_linear_map(torch.randn(40, 6), torch.randn(39, 3))
    with pytest.raises(ValueError, match="source \\[M, k\\]"):
        fit_linear_map(torch.randn(40), torch.randn(40, 3))
