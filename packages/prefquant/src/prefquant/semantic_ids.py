"""Unique code tuples (semantic IDs) from possibly colliding quantizer codes."""

from __future__ import annotations

import torch
from torch import Tensor

from ._arrays import TensorOrArray, to_tensor

__all__ = ["append_disambiguation"]


def _check_int_matrix(codes: TensorOrArray, what: str) -> Tensor:
    """``codes`` as an integer tensor [N, L] (numpy arrays are wrapped), or a clear error."""
    codes = to_tensor(codes, what)
    if codes.dim() != 2:
        raise ValueError(f"{what} must have shape [N, L], got {list(codes.shape)}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"{what} must be an integer tensor, got {codes.dtype}")
    return codes


def _rank_within_groups(groups: Tensor) -> Tensor:
    """For group ids [N], the 0-based position of each row among the rows of its group, in row order."""
    order = torch.argsort(groups, stable=True)
    sizes = torch.bincount(groups)
    starts = torch.cumsum(sizes, 0) - sizes
    sorted_groups = groups[order]
    ranks = torch.empty_like(groups)
    ranks[order] = torch.arange(groups.numel(), device=groups.device) - starts[sorted_groups]
    return ranks


def append_disambiguation(codes: TensorOrArray, existing: TensorOrArray | None = None) -> Tensor:
    """Append a disambiguation level so that every row's code tuple is unique.

    Rows that share the same L codes get 0, 1, 2, ... in row order as their extra code;
    a row with a unique prefix gets 0. This is how generative-retrieval systems turn
    residual-quantizer codes into item semantic IDs.

    Args:
        codes: [N, L] integer codes.
        existing: optional [M, L + 1] IDs already handed out (for example to the items of
            an earlier catalog). New rows sharing a prefix with them continue after the
            largest suffix used for that prefix, so old IDs stay valid and new ones do
            not collide with them.

    Returns:
        [N, L + 1] long tensor; with ``existing`` given, no row equals an existing row.
    """
    codes = _check_int_matrix(codes, "codes").long()
    num_rows, num_levels = codes.shape
    if existing is not None:
        existing = _check_int_matrix(existing, "existing")
        if existing.shape[1] != num_levels + 1:
            raise ValueError(
                f"existing must have shape [M, {num_levels + 1}] (codes plus disambiguation), "
                f"got {list(existing.shape)}"
            )
        existing = existing.long().to(codes.device)
    if num_rows == 0:
        return torch.empty(0, num_levels + 1, dtype=torch.long, device=codes.device)
    if existing is None or existing.shape[0] == 0:
        _, groups = torch.unique(codes, dim=0, return_inverse=True)
        suffix = _rank_within_groups(groups)
    else:
        prefixes = torch.cat([existing[:, :num_levels], codes])
        _, groups = torch.unique(prefixes, dim=0, return_inverse=True)
        old_groups, new_groups = groups[: existing.shape[0]], groups[existing.shape[0] :]
        next_free = torch.zeros(int(groups.max()) + 1, dtype=torch.long, device=codes.device)
        next_free.scatter_reduce_(0, old_groups, existing[:, num_levels] + 1, reduce="amax")
        # Rank among new rows only; the existing rows are already accounted for by next_free.
        _, compact = torch.unique(new_groups, return_inverse=True)
        suffix = _rank_within_groups(compact) + next_free[new_groups]
    return torch.cat([codes, suffix.unsqueeze(-1)], dim=-1)
