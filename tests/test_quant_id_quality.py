"""prefquant accepts numpy arrays wherever it takes tensors, and reports semantic-ID quality per level."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from prefquant import (
    ResidualQuantizer,
    VectorQuantizer,
    append_disambiguation,
    code_usage,
    fit_quantizer,
    normalized_mutual_information,
    semantic_id_quality,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def test_numpy_inputs_give_the_same_results_as_tensors():
    x = np.random.default_rng(0).normal(size=(300, 6))  # float64, as numpy makes it
    from_numpy = ResidualQuantizer(6, num_levels=2, codebook_size=8)
    from_torch = ResidualQuantizer(6, num_levels=2, codebook_size=8)
    fit_quantizer(from_numpy, x, epochs=2, batch_size=100, seed=1)
    fit_quantizer(from_torch, torch.from_numpy(x), epochs=2, batch_size=100, seed=1)
    assert torch.equal(from_numpy.codebooks, from_torch.codebooks)
    codes = from_numpy.encode(x)
    assert isinstance(codes, torch.Tensor) and codes.dtype == torch.long
    assert torch.equal(codes, from_numpy.encode(torch.from_numpy(x).float()))
    assert torch.allclose(from_numpy.decode(codes.numpy()), from_numpy.decode(codes))
    assert torch.equal(from_numpy(x.astype(np.float32)).codes, codes)
    assert torch.equal(from_numpy.encode_unique(x), append_disambiguation(codes.numpy()))
    assert torch.equal(code_usage(codes.numpy(), 8), code_usage(codes, 8))
    labels = np.arange(300) % 3
    assert normalized_mutual_information(codes[:, 0].numpy(), labels) == normalized_mutual_information(
        codes[:, 0], torch.from_numpy(labels)
    )
    vq = VectorQuantizer(6, 4)
    vq.train()
    vq(x[:64])
    assert vq.encode(x[:5]).shape == (5, 1)


def test_bad_inputs_are_named():
    rq = ResidualQuantizer(4, num_levels=2, codebook_size=4)
    with pytest.raises(TypeError, match="x must be a torch.Tensor or a numpy array, got list"):
        rq.encode([[0.0] * 4])
    with pytest.raises(TypeError, match="floating-point"):
        rq(np.zeros((3, 4), dtype=np.int64))
    with pytest.raises(TypeError, match="codes: cannot convert ndarray"):
        append_disambiguation(np.array([[object()]], dtype=object))
    with pytest.raises(ValueError, match=r"x must have shape \[N, 4\]"):
        rq.encode(np.zeros((3, 5), dtype=np.float32))


def test_quality_report_counts_collisions_by_hand():
    codes = torch.tensor(
        [
            [0, 1],
            [0, 1],  # same full tuple as row 0
            [0, 2],  # shares level-0 code with rows 0, 1 only
            [3, 1],
            [3, 1],
            [3, 1],  # three rows share (3, 1)
        ]
    )
    report = semantic_id_quality(codes, codebook_size=4)
    assert report.num_items == 6 and report.codebook_size == 4
    assert report.usage == (0.5, 0.5)
    # level 0: codes 0 and 3, 3 items each -> 1 bit; level 1: 5 x code 1, 1 x code 2.
    p = np.array([5 / 6, 1 / 6])
    assert report.entropy_bits[0] == pytest.approx(1.0, abs=1e-5)
    assert report.entropy_bits[1] == pytest.approx(float(-(p * np.log2(p)).sum()), abs=1e-5)
    assert report.perplexity[0] == pytest.approx(2.0, abs=1e-5)
    assert report.prefix_collision_rate == (1.0, pytest.approx(5 / 6, abs=1e-6))
    assert report.collision_rate == pytest.approx(5 / 6, abs=1e-6)
    assert report.largest_collision_group == 3
    assert report.distinct_tuples == 3
    as_dict = json.loads(json.dumps(report.to_dict()))
    assert as_dict["usage"] == [0.5, 0.5] and as_dict["largest_collision_group"] == 3
    # The suffix level needs as many values as the largest group.
    assert int(append_disambiguation(codes)[:, -1].max()) + 1 == report.largest_collision_group


def test_quality_of_unique_codes_and_of_a_trained_quantizer():
    unique = torch.stack([torch.arange(16) // 4, torch.arange(16) % 4], dim=1)
    report = semantic_id_quality(unique.numpy(), 4)
    assert report.collision_rate == 0.0 and report.largest_collision_group == 1
    assert report.usage == (1.0, 1.0) and report.entropy_bits == (2.0, 2.0)

    torch.manual_seed(0)
    x = torch.randn(512, 8)
    rq = ResidualQuantizer(8, num_levels=2, codebook_size=16)
    fit_quantizer(rq, x, epochs=3, batch_size=128)
    trained = semantic_id_quality(rq.encode(x), 16)
    assert all(0.5 < u <= 1.0 for u in trained.usage)
    assert all(e <= math.log2(16) + 1e-6 for e in trained.entropy_bits)
    # Deeper prefixes can only split groups, never merge them.
    assert trained.prefix_collision_rate[1] <= trained.prefix_collision_rate[0]


def test_quality_report_errors():
    with pytest.raises(ValueError, match="empty"):
        semantic_id_quality(torch.empty(0, 2, dtype=torch.long), 4)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 4\)"):
        semantic_id_quality(torch.tensor([[0, 4]]), 4)
    with pytest.raises(ValueError, match="codebook_size"):
        semantic_id_quality(torch.tensor([[0, 1]]), 0)
