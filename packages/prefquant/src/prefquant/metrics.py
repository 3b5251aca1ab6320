"""Code statistics: usage, perplexity, semantic-ID quality, and agreement of codes with labels (torch only)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ._arrays import TensorOrArray, to_tensor

__all__ = [
    "SemanticIdQuality",
    "code_perplexity",
    "code_usage",
    "homogeneity",
    "normalized_mutual_information",
    "semantic_id_quality",
    "tuple_ids",
]


def _check_codes(codes: TensorOrArray) -> Tensor:
    codes = to_tensor(codes, "codes")
    if codes.dim() == 1:
        codes = codes.unsqueeze(-1)
    if codes.dim() != 2 or codes.is_floating_point():
        raise ValueError(
            f"codes must be an integer tensor [N] or [N, L], got {codes.dtype} {list(codes.shape)}"
        )
    return codes.long()


def code_usage(codes: TensorOrArray, codebook_size: int) -> Tensor:
    """[L] fraction of the K codes of each level that occur at least once in codes [N, L]."""
    codes = _check_codes(codes)
    return torch.stack(
        [
            (torch.bincount(level, minlength=codebook_size)[:codebook_size] > 0).float().mean()
            for level in codes.t()
        ]
    )


def code_perplexity(codes: TensorOrArray, codebook_size: int) -> Tensor:
    """[L] exp(entropy) of each level's code distribution in codes [N, L] (K = uniform use)."""
    codes = _check_codes(codes)
    out = []
    for level in codes.t():
        probs = torch.bincount(level, minlength=codebook_size).double()
        probs = probs / probs.sum().clamp_min(1)
        out.append(torch.exp(-(probs * probs.clamp_min(1e-300).log()).sum()).float())
    return torch.stack(out)


def tuple_ids(codes: TensorOrArray) -> Tensor:
    """[N] one integer per distinct row of codes [N, L] (equal rows, equal ids)."""
    return torch.unique(_check_codes(codes), dim=0, return_inverse=True)[1]


@dataclass(frozen=True)
class SemanticIdQuality:
    """How good L-level codes [N, L] are as item IDs, before any disambiguation suffix.

    Attributes:
        num_items: N.
        codebook_size: K.
        usage: per level, the fraction of the K codes used by at least one item.
        entropy_bits: per level, the entropy of the code distribution in bits (log2 K at most).
        perplexity: per level, 2 ** entropy_bits (K means uniform use, 1 a single code).
        prefix_collision_rate: per level l, the fraction of items whose first l + 1 codes
            are shared with at least one other item (falls with depth for useful codes).
        collision_rate: ``prefix_collision_rate[-1]``: the fraction of items sharing their
            full code tuple with another item, i.e. the items that need a non-trivial suffix.
        largest_collision_group: the most items sharing one full tuple (1 when all are
            unique); the suffix level needs this many values.
        distinct_tuples: the number of distinct full tuples.
    """

    num_items: int
    codebook_size: int
    usage: tuple[float, ...]
    entropy_bits: tuple[float, ...]
    perplexity: tuple[float, ...]
    prefix_collision_rate: tuple[float, ...]
    collision_rate: float
    largest_collision_group: int
    distinct_tuples: int

    def to_dict(self) -> dict[str, object]:
        """A JSON-serialisable dict of every field (tuples become lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()
        }


def semantic_id_quality(codes: TensorOrArray, codebook_size: int) -> SemanticIdQuality:
    """Per-level usage, entropy and perplexity, and prefix collisions of codes [N, L].

    Pass the quantizer's codes (``encode``), not IDs with a suffix already appended: the
    suffix exists to remove exactly the collisions this reports.
    """
    codes = _check_codes(codes)
    if not isinstance(codebook_size, int) or codebook_size < 1:
        raise ValueError(f"codebook_size must be a positive int, got {codebook_size!r}")
    num_items = codes.shape[0]
    if num_items == 0:
        raise ValueError("codes are empty: nothing to measure")
    if int(codes.min()) < 0 or int(codes.max()) >= codebook_size:
        raise ValueError(
            f"codes must lie in [0, {codebook_size}), got values in [{int(codes.min())}, {int(codes.max())}]"
        )
    perplexity = code_perplexity(codes, codebook_size).double()
    collision_rates = []
    for depth in range(1, codes.shape[1] + 1):
        _, groups, sizes = torch.unique(codes[:, :depth], dim=0, return_inverse=True, return_counts=True)
        collision_rates.append(float((sizes[groups] > 1).double().mean()))
    return SemanticIdQuality(
        num_items=num_items,
        codebook_size=codebook_size,
        usage=tuple(round(float(v), 6) for v in code_usage(codes, codebook_size)),
        entropy_bits=tuple(round(math.log2(float(v)), 6) for v in perplexity),
        perplexity=tuple(round(float(v), 6) for v in perplexity),
        prefix_collision_rate=tuple(round(v, 6) for v in collision_rates),
        collision_rate=round(collision_rates[-1], 6),
        largest_collision_group=int(sizes.max()),
        distinct_tuples=int(sizes.numel()),
    )


def _entropies(a: TensorOrArray, b: TensorOrArray) -> tuple[float, float, float]:
    """(H(a), H(b), I(a; b)) in nats for label vectors [N]."""
    a, b = to_tensor(a, "labels"), to_tensor(b, "labels")
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


def normalized_mutual_information(labels_a: TensorOrArray, labels_b: TensorOrArray) -> float:
    """NMI of two labelings [N]: I(a; b) / mean(H(a), H(b)), in [0, 1].

    Same definition as scikit-learn's default (arithmetic mean). Two constant labelings
    give 1.0. Use :func:`tuple_ids` to turn codes [N, L] into one label per row.
    """
    ha, hb, mutual = _entropies(labels_a, labels_b)
    if ha == 0.0 and hb == 0.0:
        return 1.0
    denom = (ha + hb) / 2
    return 0.0 if denom <= 0 else min(mutual / denom, 1.0)


def homogeneity(codes: TensorOrArray, labels: TensorOrArray) -> float:
    """1 - H(labels | codes) / H(labels): 1 when every code holds a single label, in [0, 1].

    Unlike NMI it does not penalise using more codes than there are labels, which is
    what a quantizer with K > number of tastes does.
    """
    h_labels, _, mutual = _entropies(labels, codes)
    if h_labels == 0.0:
        return 1.0
    return max(0.0, min(1.0, mutual / h_labels))
