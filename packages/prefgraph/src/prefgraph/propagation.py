"""LightGCN-style linear propagation over a sparse normalised adjacency (no torch-sparse needed)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["propagate"]


def propagate(adjacency: Tensor, node_embeddings: Tensor, num_layers: int, *, symmetric: bool = False) -> Tensor:
    r"""Mean of the layer outputs of ``num_layers`` rounds of :math:`x^{(k+1)} = \hat A x^{(k)}`.

    .. math::
        \mathrm{out} = \frac{1}{K + 1} \sum_{k=0}^{K} \hat A^k x^{(0)}

    This is LightGCN's propagation with uniform layer weights :math:`\alpha_k = 1/(K+1)`. It
    uses ``torch.sparse.mm``, so it runs on the full graph with plain torch sparse tensors
    (no pyg-lib / torch-sparse) and is differentiable with respect to ``node_embeddings``.

    Args:
        adjacency: sparse (COO or CSR) or dense float tensor [N, N], e.g.
            :attr:`InteractionGraph.adjacency` or :attr:`InteractionGraph.adjacency_csr`.
        node_embeddings: FloatTensor [N, D], layer-0 embeddings (users first, then items).
            Several modalities can be propagated at once by concatenating them along D:
            propagation is linear and acts on each column independently.
        num_layers: K >= 0; K = 0 returns the input unchanged.
        symmetric: the caller vouches that ``adjacency`` is symmetric (an
            :class:`InteractionGraph`'s always is). The operator is then its own transpose, so
            the gradient is the same propagation applied to the incoming gradient: no sparse
            transpose per backward pass (a sort of the 2E entries for COO) and no per-layer
            autograd graph. The same values and gradients either way, up to float rounding.

    Returns:
        FloatTensor [N, D].
    """
    if num_layers < 0:
        raise ValueError(f"num_layers must be >= 0, got {num_layers}")
    if adjacency.dim() != 2 or adjacency.size(0) != adjacency.size(1):
        raise ValueError(f"adjacency must be square [N, N], got {tuple(adjacency.shape)}")
    if node_embeddings.dim() != 2 or node_embeddings.size(0) != adjacency.size(0):
        raise ValueError(
            f"node_embeddings must be [N={adjacency.size(0)}, D], got {tuple(node_embeddings.shape)}"
        )
    if symmetric and num_layers > 0 and torch.is_grad_enabled() and node_embeddings.requires_grad:
        return _SymmetricPropagation.apply(adjacency, node_embeddings, num_layers)
    return _layer_mean(adjacency, node_embeddings, num_layers)


def _layer_mean(adjacency: Tensor, node_embeddings: Tensor, num_layers: int) -> Tensor:
    """``(1 / (K + 1)) sum_k A^k x`` [N, D], through whatever autograd the products record."""
    layer = node_embeddings
    total = node_embeddings
    for _ in range(num_layers):
        layer = adjacency @ layer if adjacency.layout == torch.strided else torch.sparse.mm(adjacency, layer)
        total = total + layer
    return total / (num_layers + 1)


class _SymmetricPropagation(torch.autograd.Function):
    """:func:`_layer_mean` for a symmetric ``A``: ``P = mean_k A^k`` is symmetric, so ``dL/dx = P g``."""

    @staticmethod
    def forward(ctx: Any, adjacency: Tensor, node_embeddings: Tensor, num_layers: int) -> Tensor:
        ctx.adjacency, ctx.num_layers = adjacency, num_layers
        return _layer_mean(adjacency, node_embeddings, num_layers)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        return None, _layer_mean(ctx.adjacency, grad.contiguous(), ctx.num_layers), None
