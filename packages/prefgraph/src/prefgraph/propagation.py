"""LightGCN-style linear propagation over a sparse normalised adjacency (no torch-sparse needed)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

__all__ = ["BipartiteAdjacency", "propagate"]

COLUMN_BLOCK = 16
"""Columns a :class:`BipartiteAdjacency` propagates at a time (see :func:`_layer_mean`): 16 float32
are one 64-byte cache line, so a row gathered per non-zero is a single line."""


TILE_ROWS = 32768
"""Rows of the table a :class:`BipartiteAdjacency` product gathers from at a time: 32768 rows of
:data:`COLUMN_BLOCK` float32 are 2 MB, which stay in the last-level cache beside the output."""


class BipartiteAdjacency:
    r"""The symmetric (U + I) x (U + I) adjacency :math:`\begin{pmatrix} 0 & R \\ R^\top & 0 \end{pmatrix}`
    of a bipartite graph, kept as its two off-diagonal blocks, each cut into column tiles.

    A product with it is two smaller products, :math:`R x_\mathrm{items}` for the user rows and
    :math:`R^\top x_\mathrm{users}` for the item rows, written into the two row ranges of one
    output. Each reads one row of the other side's table per non-zero, at random. A block is kept
    as tiles of at most ``tile_rows`` columns (:data:`TILE_ROWS`) and a product sums one product
    per tile, each reading a slice of the table small enough to stay in cache: at 10^6 users
    the item rows' product otherwise reads 16 columns of a 64 MB user table, which does not
    stay in cache (``benchmarks/scale.py`` times the whole step). The tiles hold the blocks'
    entries once; :attr:`user_item` and :attr:`item_user` put them back together on access.

    Args:
        user_item: sparse CSR float [U, I], :math:`R` (row ``u``: user ``u``'s items).
        item_user: sparse CSR float [I, U], :math:`R^\top`.
        tile_rows: the most columns in one tile (rows of the table a tile's product reads).

    Attributes:
        user_item_tiles: ``((first column, sparse CSR [U, width]), ...)``, :math:`R`'s tiles in order.
        item_user_tiles: the same for :math:`R^\top`.
    """

    def __init__(self, user_item: Tensor, item_user: Tensor, *, tile_rows: int = TILE_ROWS) -> None:
        if user_item.layout != torch.sparse_csr or item_user.layout != torch.sparse_csr:
            raise ValueError("both blocks must be sparse CSR tensors")
        if tuple(item_user.shape) != tuple(reversed(user_item.shape)):
            raise ValueError(
                f"item_user must be [I, U] for user_item [U, I], got {tuple(item_user.shape)} "
                f"and {tuple(user_item.shape)}"
            )
        if tile_rows < 1:
            raise ValueError(f"tile_rows must be >= 1, got {tile_rows}")
        self.num_users, self.num_items = user_item.shape
        self.user_item_tiles = _column_tiles(user_item, tile_rows)
        self.item_user_tiles = _column_tiles(item_user, tile_rows)

    @property
    def num_nodes(self) -> int:
        """U + I."""
        return self.num_users + self.num_items

    @property
    def user_item(self) -> Tensor:
        """:math:`R`, sparse CSR [U, I], assembled from :attr:`user_item_tiles`."""
        return _join_tiles(self.user_item_tiles, self.num_items)

    @property
    def item_user(self) -> Tensor:
        """:math:`R^\top`, sparse CSR [I, U], assembled from :attr:`item_user_tiles`."""
        return _join_tiles(self.item_user_tiles, self.num_users)

    def __repr__(self) -> str:
        return (f"BipartiteAdjacency(num_users={self.num_users}, num_items={self.num_items}, "
                f"tiles={len(self.user_item_tiles)}+{len(self.item_user_tiles)})")


def _column_tiles(matrix: Tensor, tile_rows: int) -> tuple[tuple[int, Tensor], ...]:
    """``matrix`` (sparse CSR [R, C]) as ``((first column, CSR [R, width <= tile_rows]), ...)``."""
    num_rows, num_cols = matrix.shape
    crow, cols, values = matrix.crow_indices(), matrix.col_indices(), matrix.values()
    if num_cols <= tile_rows:
        return ((0, _csr(crow, cols, values, (num_rows, num_cols))),)
    num_tiles = -(-num_cols // tile_rows)
    rows = torch.repeat_interleave(torch.arange(num_rows, device=cols.device), crow.diff().long())
    tile = torch.div(cols, tile_rows, rounding_mode="floor")
    # One stable sort by tile makes every tile's entries one slice, still in (row, column) order:
    # O(E log E) once rather than a pass over all E entries per tile (31 tiles at 10^6 users).
    order = torch.argsort(tile, stable=True)
    rows, cols, values = rows[order], cols[order], values[order]
    ends = torch.cumsum(torch.bincount(tile, minlength=num_tiles), 0).tolist()
    tiles = []
    for index, (begin, end) in enumerate(zip([0, *ends[:-1]], ends, strict=True)):
        first = index * tile_rows
        tile_crow = torch.zeros(num_rows + 1, dtype=torch.long, device=cols.device)
        tile_crow[1:] = torch.cumsum(torch.bincount(rows[begin:end], minlength=num_rows), 0)
        width = min(tile_rows, num_cols - first)
        tiles.append((first, _csr(tile_crow, cols[begin:end] - first, values[begin:end], (num_rows, width))))
    return tuple(tiles)


def _join_tiles(tiles: tuple[tuple[int, Tensor], ...], num_cols: int) -> Tensor:
    """The inverse of :func:`_column_tiles`: one sparse CSR [R, ``num_cols``]."""
    if len(tiles) == 1:
        return tiles[0][1]
    rows, cols, values = [], [], []
    for first, tile in tiles:
        crow = tile.crow_indices()
        rows.append(torch.repeat_interleave(torch.arange(tile.size(0), device=crow.device), crow.diff().long()))
        cols.append(tile.col_indices().long() + first)
        values.append(tile.values())
    # A stable sort by row keeps each row's columns in tile order, so increasing.
    row, order = torch.sort(torch.cat(rows), stable=True)
    num_rows = tiles[0][1].size(0)
    crow = torch.zeros(num_rows + 1, dtype=row.dtype, device=row.device)
    crow[1:] = torch.cumsum(torch.bincount(row, minlength=num_rows), 0)
    return _csr(crow, torch.cat(cols)[order], torch.cat(values)[order], (num_rows, num_cols))


def _csr(crow: Tensor, cols: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    """A sparse CSR tensor, with int32 indices where they fit: a product streams every index once,
    so 4-byte indices instead of 8 cut what it reads."""
    if max(values.numel(), *size) < 2**31:
        crow, cols = crow.to(torch.int32), cols.to(torch.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's "sparse CSR is in beta" notice
        return torch.sparse_csr_tensor(crow, cols, values, size, check_invariants=False)


def propagate(
    adjacency: Tensor | BipartiteAdjacency, node_embeddings: Tensor, num_layers: int, *, symmetric: bool = False
) -> Tensor:
    r"""Mean of the layer outputs of ``num_layers`` rounds of :math:`x^{(k+1)} = \hat A x^{(k)}`.

    .. math::
        \mathrm{out} = \frac{1}{K + 1} \sum_{k=0}^{K} \hat A^k x^{(0)}

    This is LightGCN's propagation with uniform layer weights :math:`\alpha_k = 1/(K+1)`. It
    uses torch's sparse products, so it runs on the full graph with plain torch sparse tensors
    (no pyg-lib / torch-sparse) and is differentiable with respect to ``node_embeddings``.

    Args:
        adjacency: sparse (COO or CSR) or dense float tensor [N, N], e.g.
            :attr:`InteractionGraph.adjacency`, or a :class:`BipartiteAdjacency` with N = U + I
            (:attr:`InteractionGraph.adjacency_blocks`), which is always symmetric.
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
    bipartite = isinstance(adjacency, BipartiteAdjacency)
    num_nodes = adjacency.num_nodes if bipartite else adjacency.size(0)
    if not bipartite and (adjacency.dim() != 2 or adjacency.size(0) != adjacency.size(1)):
        raise ValueError(f"adjacency must be square [N, N], got {tuple(adjacency.shape)}")
    if node_embeddings.dim() != 2 or node_embeddings.size(0) != num_nodes:
        raise ValueError(f"node_embeddings must be [N={num_nodes}, D], got {tuple(node_embeddings.shape)}")
    if (
        (symmetric or bipartite)
        and num_layers > 0
        and torch.is_grad_enabled()
        and node_embeddings.requires_grad
    ):
        return _SymmetricPropagation.apply(adjacency, node_embeddings, num_layers)
    return _layer_mean(adjacency, node_embeddings, num_layers)


def _layer_mean(adjacency: Tensor | BipartiteAdjacency, node_embeddings: Tensor, num_layers: int) -> Tensor:
    """``(1 / (K + 1)) sum_k A^k x`` [N, D], through whatever autograd the products record.

    Horner's rule, ``y <- x / (K + 1) + A y`` K times from ``y = x / (K + 1)``: each layer is one
    fused multiply-add product instead of a product, a sum and a division over [N, D] apiece.
    Over a :class:`BipartiteAdjacency` the columns go :data:`COLUMN_BLOCK` at a time: a product
    reads a random row of the other side's table per non-zero, and a narrow table (16 columns of
    100,000 users: 6 MB, a cache line a row) stays in the last-level cache where the whole one
    (192 columns: 77 MB) does not. On one CPU thread at 10^5 users (``benchmarks/scale.py``'s
    graph, 192 columns, 2 layers) that took a forward pass from 1.8-2.0 s to 0.9-1.05 s; blocks of
    32-96 columns gained little over none. The adjacency's column tiles (:data:`TILE_ROWS`) then
    keep the slice read at once small at any number of users.
    """
    if isinstance(adjacency, BipartiteAdjacency) and node_embeddings.size(1) > COLUMN_BLOCK:
        out = torch.empty_like(node_embeddings)
        for start in range(0, node_embeddings.size(1), COLUMN_BLOCK):
            # A strided slice: the division below reads it into a contiguous block, one pass for both.
            block = node_embeddings[:, start : start + COLUMN_BLOCK]
            out[:, start : start + COLUMN_BLOCK] = _layer_mean(adjacency, block, num_layers)
        return out
    # Contiguous even from a column slice: torch lays out the result of gapped strides densely.
    scaled = node_embeddings / (num_layers + 1)
    out = scaled
    for _ in range(num_layers):
        out = _scaled_plus_product(adjacency, scaled, out)
    return out


def _scaled_plus_product(adjacency: Tensor | BipartiteAdjacency, base: Tensor, x: Tensor) -> Tensor:
    """``base + A x`` [N, D] for ``base`` and ``x`` [N, D]."""
    if isinstance(adjacency, BipartiteAdjacency):
        # Written straight into the two row ranges of one output: no concatenation afterwards.
        u = adjacency.num_users
        out = torch.empty_like(x)
        _tiled_addmm(base[:u], adjacency.user_item_tiles, x[u:], out[:u])
        _tiled_addmm(base[u:], adjacency.item_user_tiles, x[:u], out[u:])
        return out
    if adjacency.layout == torch.strided:
        return torch.addmm(base, adjacency, x)
    return base + torch.sparse.mm(adjacency, x)


def _tiled_addmm(base: Tensor, tiles: tuple[tuple[int, Tensor], ...], x: Tensor, out: Tensor) -> None:
    """``out = base + M x`` for ``M`` [R, C] given as column tiles, ``x`` [C, D], ``base`` and ``out`` [R, D]."""
    (first, tile), *rest = tiles
    torch.addmm(base, tile, x[first : first + tile.size(1)], out=out)
    for first, tile in rest:
        out.addmm_(tile, x[first : first + tile.size(1)])


class _SymmetricPropagation(torch.autograd.Function):
    """:func:`_layer_mean` for a symmetric ``A``: ``P = mean_k A^k`` is symmetric, so ``dL/dx = P g``."""

    @staticmethod
    def forward(ctx: Any, adjacency: Tensor | BipartiteAdjacency, node_embeddings: Tensor, num_layers: int) -> Tensor:
        ctx.adjacency, ctx.num_layers = adjacency, num_layers
        return _layer_mean(adjacency, node_embeddings, num_layers)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        return None, _layer_mean(ctx.adjacency, grad.contiguous(), ctx.num_layers), None
