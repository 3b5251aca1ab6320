"""Linear probes (pmg.evaluate.probes): what benchmarks/taste_probe.py reads a taste with."""

from __future__ import annotations

import torch

from pmg.evaluate.probes import linear_probe_hits, one_hot_codes


def _split(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(count, generator=torch.Generator().manual_seed(0))
    return order[: count * 3 // 4], order[count * 3 // 4 :]


def test_a_taste_written_in_the_vectors_is_read_and_noise_is_not() -> None:
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (800,), generator=generator)
    train, test = _split(800)
    centres = torch.randn(4, 16, generator=generator) * 3
    readable = centres[labels] + torch.randn(800, 16, generator=generator)
    noise = torch.randn(800, 16, generator=generator)
    assert linear_probe_hits(readable, labels, train, test).float().mean() > 0.95
    # Labels the vectors know nothing of: chance (1/4), whatever the probe fitted on the training rows.
    assert abs(float(linear_probe_hits(noise, labels, train, test).float().mean()) - 0.25) < 0.08
    # One result per test row, and the same result again (deterministic).
    hits = linear_probe_hits(readable, labels, train, test)
    assert hits.shape == (len(test),) and torch.equal(hits, linear_probe_hits(readable, labels, train, test))


def test_one_hot_codes_read_as_tokens_do() -> None:
    codes = torch.tensor([[0, 2], [1, 2], [1, 0]])
    x = one_hot_codes(codes, codebook_size=3)
    assert x.shape == (3, 6)
    assert torch.equal(x[1], torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 1.0]))
    # A taste carried by one level's code is read exactly; one no code carries is not.
    generator = torch.Generator().manual_seed(2)
    many = torch.randint(0, 8, (600, 3), generator=generator)
    train, test = _split(600)
    assert bool(linear_probe_hits(one_hot_codes(many), many[:, 1] % 4, train, test).all())
    unrelated = torch.randint(0, 4, (600,), generator=generator)
    assert float(linear_probe_hits(one_hot_codes(many), unrelated, train, test).float().mean()) < 0.4
