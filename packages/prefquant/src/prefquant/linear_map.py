"""A linear map between two embedding spaces, fitted in closed form from paired examples."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["fit_linear_map"]


def fit_linear_map(source: Tensor, target: Tensor, ridge: float = 1e-3) -> Tensor:
    """Ridge least-squares map ``W`` [k, d] with ``source @ W ≈ target``.

    Args:
        source: [M, k] examples in the source space (e.g. item feature vectors, or the CLIP
            embeddings of catalog items).
        target: [M, d] the matching vectors in the target space (e.g. the mean embedding of
            each item's title tokens, or the items' preference embeddings).
        ridge: L2 penalty on ``W``; keeps the solve well posed when M < k.

    Returns:
        ``W`` [k, d] in ``target``'s dtype: ``(sᵀs + ridge·I)⁻¹ sᵀt``, solved in
        float64. ``source @ W`` maps new rows [N, k] to [N, d]; an ``nn.Linear(k, d)`` holds
        the transpose, ``W.T`` [d, k], as its weight (e.g. prefreward's ``PersonalizationReward``).
    """
    if source.ndim != 2 or target.ndim != 2 or source.shape[0] != target.shape[0]:
        raise ValueError(f"fit_linear_map needs source [M, k] and target [M, d] with the same M, "
                         f"got {tuple(source.shape)} and {tuple(target.shape)}")
    x, y = source.double(), target.double()
    gram = x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    return torch.linalg.solve(gram, x.T @ y).to(target.dtype)
