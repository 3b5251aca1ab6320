"""Linear probes: how much of a ground-truth user taste a set of user vectors holds.

A probe is a multinomial logistic regression fitted on some users' vectors and scored on
others'. It answers "is the taste linearly readable from these vectors?", which is what a
quantizer's codes and a generator's token rows can use, without training either.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["linear_probe_hits", "one_hot_codes"]


def linear_probe_hits(x: torch.Tensor, labels: torch.Tensor, train: torch.Tensor, test: torch.Tensor,
                      weight_decay: float = 1e-3) -> torch.Tensor:
    """Bool [len(test)]: whether a probe fitted on rows ``train`` of ``x`` [U, d] (standardised
    with the training rows' statistics) predicts ``labels`` [U] (int64) of rows ``test`` (index
    tensors or bool masks over U) right. Deterministic: LBFGS from a zero start.
    """
    x = x.float()
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
    z = (x - mean) / std
    classes = int(labels.max()) + 1
    weight = torch.zeros(classes, z.size(1), requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z[train] @ weight.T + bias, labels[train]) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return (z[test] @ weight.T + bias).argmax(1) == labels[test]


def one_hot_codes(codes: torch.Tensor, codebook_size: int | None = None) -> torch.Tensor:
    """Float [U, L·K]: the one-hot of each level's code of ``codes`` [U, L] (int64), levels side by
    side, so that a linear probe reads what the discrete tokens say (K: the largest code + 1 if None)."""
    size = int(codes.max()) + 1 if codebook_size is None else codebook_size
    return F.one_hot(codes.long(), size).flatten(1).float()
