"""Code statistics: usage, perplexity, and agreement of codes with labels (torch only)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["code_perplexity", "code_usage", "homogeneity", "normalized_mutual_information", "tuple_ids"]


def _check_codes(codes: Tensor) -> Tensor:
    if codes.dim() == 1:
        codes = codes.unsqueeze(-1)
    if codes.dim() != 2 or codes.is_floating_point():
        raise ValueError(
            f"codes must be an integer tensor [N] or [N, L], got {codes.dtype} {list(codes.shape)}"
        )
    return codes.long()


def code_usage(codes: Tensor, codebook_size: int) -> Tensor:
    """[L] fraction of the K codes of each level that occur at least once in codes [N, L]."""
    codes = _check_codes(codes)
    return torch.stack(
        [
            (torch.bincount(level, minlength=codebook_size)[:codebook_size] > 0).float().mean()
            for level in codes.t()
        ]
    )


def code_perplexity(codes: Tensor, codebook_size: int) -> Tensor:
    """[L] exp(entropy) of each level's code distribution in codes [N, L] (K = uniform use)."""
    codes = _check_codes(codes)
    out = []
    for level in codes.t():
        probs = torch.bincount(level, minlength=codebook_size).double()
        probs = probs / probs.sum().clamp_min(1)
        out.append(torch.exp(-(probs * probs.clamp_min(1e-300).log()).sum()).float())
    return torch.stack(out)


def tuple_ids(codes: Tensor) -> Tensor:
    """[N] one integer per distinct row of codes [N, L] (equal rows, equal ids)."""
    return torch.unique(_check_codes(codes), dim=0, return_inverse=True)[1]


def _entropies(a: Tensor, b: Tensor) -> tuple[float, float, float]:
    """(H(a), H(b), I(a; b)) in nats for label vectors [N]."""
    if a.shape != b.shape or a.dim() != 1:
        raise ValueError(
            f"labels must be two [N] tensors of equal length, got {list(a.shape)} and {list(b.shape)}"
        )
    if a.numel() == 0:
        raise ValueError("labels are empty")
    _, a = torch.unique(a, return_inverse=True)
    _, b = torch.unique(b, return_inverse=True)
    n = a.numel()
    nb = int(b.max()) + 1
    joint = torch.bincount(a * nb + b, minlength=(int(a.max()) + 1) * nb).double().reshape(-1, nb) / n
    pa, pb = joint.sum(1), joint.sum(0)

    def entropy(p: Tensor) -> float:
        p = p[p > 0]
        return float(-(p * p.log()).sum())

    nz = joint > 0
    mutual = float((joint[nz] * (joint[nz] / (pa[:, None] * pb[None, :])[nz]).log()).sum())
    return entropy(pa), entropy(pb), max(mutual, 0.0)


def normalized_mutual_information(labels_a: Tensor, labels_b: Tensor) -> float:
    """NMI of two labelings [N]: I(a; b) / mean(H(a), H(b)), in [0, 1].

    Same definition as scikit-learn's default (arithmetic mean). Two constant labelings
    give 1.0. Use :func:`tuple_ids` to turn codes [N, L] into one label per row.
    """
    ha, hb, mutual = _entropies(labels_a, labels_b)
    if ha == 0.0 and hb == 0.0:
        return 1.0
    denom = (ha + hb) / 2
    return 0.0 if denom <= 0 else min(mutual / denom, 1.0)


def homogeneity(codes: Tensor, labels: Tensor) -> float:
    """1 - H(labels | codes) / H(labels): 1 when every code holds a single label, in [0, 1].

    Unlike NMI it does not penalise using more codes than there are labels, which is
    what a quantizer with K > number of tastes does.
    """
    h_labels, _, mutual = _entropies(labels, codes)
    if h_labels == 0.0:
        return 1.0
    return max(0.0, min(1.0, mutual / h_labels))
