"""The user–item interaction graph shared by every prefgraph model, loss and metric.

Node numbering used throughout the package: in the homogeneous (U + I)-node view users
occupy rows ``0 .. U-1`` and items rows ``U .. U+I-1`` (item ``i`` is node ``U + i``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .propagation import BipartiteAdjacency, _csr

if TYPE_CHECKING:  # PyG is imported lazily: it takes seconds and most users never need HeteroData.
    from torch_geometric.data import HeteroData

__all__ = ["InteractionGraph", "normalized_bipartite_adjacency"]


def normalized_bipartite_adjacency(
    user_index: Tensor, item_index: Tensor, num_users: int, num_items: int, edge_weight: Tensor | None = None
) -> Tensor:
    r"""Symmetric-normalised adjacency :math:`D^{-1/2} A D^{-1/2}` of the bipartite graph.

    ``A`` is the undirected (U + I) x (U + I) adjacency with a user–item block and its
    transpose and no self-loops: binary as in LightGCN, or holding ``edge_weight`` (then ``D``
    is the weighted degree, so a node's neighbours count in proportion to their weights).
    Isolated nodes (cold-start users, unseen items, nodes whose every weight is 0) have an
    all-zero row and column instead of a division by zero.

    Args:
        user_index: LongTensor [E], user of each interaction (duplicates are merged).
        item_index: LongTensor [E], item of each interaction, in ``0 .. I-1``.
        num_users: U.
        num_items: I.
        edge_weight: optional FloatTensor [E] >= 0, e.g. from ratings; a repeated pair keeps its
            largest weight. None: binary.

    Returns:
        Coalesced sparse COO float tensor [U + I, U + I] with 2E non-zeros. It is symmetric,
        so it is its own transpose (autograd through ``torch.sparse.mm`` relies on that only
        for speed, not correctness).
    """
    num_nodes = num_users + num_items
    # Repeated (user, item) pairs count once, in the degrees as in the values.
    keys, inverse = torch.unique(user_index.long() * num_items + item_index.long(), return_inverse=True)
    user_index, item_index = keys // num_items, keys % num_items
    item_nodes = item_index + num_users
    rows = torch.cat([user_index, item_nodes])
    cols = torch.cat([item_nodes, user_index])
    if edge_weight is None:
        weight = torch.ones(keys.numel(), device=keys.device)
    else:
        weight = torch.zeros(keys.numel(), device=keys.device).scatter_reduce(
            0, inverse, _check_edge_weight(edge_weight, inverse.numel()), reduce="amax")
    weight = torch.cat([weight, weight])
    degree = torch.zeros(num_nodes, device=keys.device).index_add_(0, rows, weight)
    inv_sqrt_degree = _inverse_sqrt(degree)
    values = weight * inv_sqrt_degree[rows] * inv_sqrt_degree[cols]
    adjacency = torch.sparse_coo_tensor(
        torch.stack([rows, cols]), values, (num_nodes, num_nodes), check_invariants=False
    )
    return adjacency.coalesce()


def _inverse_sqrt(degree: Tensor) -> Tensor:
    """:math:`d^{-1/2}` [N] of weighted degrees ``degree`` [N], 0 where the degree is 0 (an isolated
    node: no weighted edge, so the value is never used)."""
    inv_sqrt_degree = degree.pow(-0.5)
    inv_sqrt_degree[degree == 0] = 0.0
    return inv_sqrt_degree


class InteractionGraph:
    r"""Training interactions between U users and I items, with per-modality item features.

    Duplicate (user, item) pairs are merged: the graph is binary, as in LightGCN.

    Args:
        user_index: LongTensor [E], user id per interaction, in ``0 .. num_users-1``.
        item_index: LongTensor [E], item id per interaction, in ``0 .. num_items-1``.
        num_users: U. Users without any interaction are allowed (cold start).
        num_items: I. Items without any interaction are allowed.
        item_features: optional ``{modality: FloatTensor [I, d_m]}``, e.g.
            ``{"visual": image_encoder_out, "textual": text_encoder_out}``. Rows of items that lack
            the modality may hold anything finite, or NaN (see ``item_feature_masks``).
        item_feature_masks: optional ``{modality: BoolTensor [I]}``, ``False`` where the item has
            no such feature (no image, no text). For a modality without a given mask the mask is
            derived from the features: rows that contain a NaN/inf are treated as missing. Missing
            rows are zeroed so they can never leak NaN into a projection.
        edge_weight: optional FloatTensor [E] >= 0 per interaction (e.g. from its rating): how
            much the edge counts in propagation (:attr:`adjacency`); a repeated pair keeps its
            largest weight. Sampling, masks and metrics ignore it. None: binary, as in LightGCN.

    Raises:
        ValueError: on empty graphs, ids out of range, mismatched lengths, feature row counts
            that differ from ``num_items``, masks of the wrong shape, or non-finite features on
            items marked present.

    Attributes:
        num_users, num_items, num_nodes (= U + I), num_interactions (= unique edges E).
        user_index, item_index: LongTensor [E], sorted by (user, item), deduplicated.
        item_features: ``dict[str, FloatTensor [I, d_m]]``.
        item_feature_masks: ``dict[str, BoolTensor [I]]`` (one per feature modality).
        user_degree: LongTensor [U]; item_degree: LongTensor [I] (edge counts, unweighted).
        edge_weight: FloatTensor [E] aligned with ``user_index``, or None (binary).
        seen_indptr: LongTensor [U + 1]; the items of user ``u`` are
            ``user_seen_items = item_index[seen_indptr[u]:seen_indptr[u + 1]]`` (a CSR).
    """

    def __init__(
        self,
        user_index: Tensor,
        item_index: Tensor,
        num_users: int,
        num_items: int,
        item_features: Mapping[str, Tensor] | None = None,
        item_feature_masks: Mapping[str, Tensor] | None = None,
        edge_weight: Tensor | None = None,
    ) -> None:
        num_users, num_items = int(num_users), int(num_items)
        if num_users <= 0 or num_items <= 0:
            raise ValueError(f"num_users and num_items must be positive, got {num_users} and {num_items}")
        user_index = _as_index_vector(user_index, "user_index")
        item_index = _as_index_vector(item_index, "item_index")
        if user_index.numel() != item_index.numel():
            raise ValueError(
                f"user_index and item_index must have the same length, got {user_index.numel()} "
                f"and {item_index.numel()}"
            )
        if user_index.numel() == 0:
            raise ValueError("empty graph: no interactions given (user_index and item_index are empty)")
        _check_range(user_index, num_users, "user_index", "num_users")
        _check_range(item_index, num_items, "item_index", "num_items")

        # Deduplicate and sort by (user, item) in one go; the sorted order is the seen-items CSR.
        keys, inverse = torch.unique(user_index * num_items + item_index, return_inverse=True)  # sorted
        self.edge_weight: Tensor | None = None
        if edge_weight is not None:
            self.edge_weight = torch.zeros(keys.numel(), device=keys.device).scatter_reduce(
                0, inverse, _check_edge_weight(edge_weight, user_index.numel()), reduce="amax")
        self._edge_keys = keys  # user * I + item, sorted: membership tests by binary search
        self.user_index: Tensor = keys // num_items
        self.item_index: Tensor = keys % num_items
        self.num_users = num_users
        self.num_items = num_items

        self.user_degree: Tensor = torch.bincount(self.user_index, minlength=num_users)
        self.item_degree: Tensor = torch.bincount(self.item_index, minlength=num_items)
        self.seen_indptr: Tensor = torch.zeros(num_users + 1, dtype=torch.long, device=keys.device)
        self.seen_indptr[1:] = torch.cumsum(self.user_degree, 0)

        self.item_features: dict[str, Tensor] = {}
        self.item_feature_masks: dict[str, Tensor] = {}
        masks = dict(item_feature_masks or {})
        unknown = set(masks) - set(item_features or {})
        if unknown:
            raise ValueError(f"item_feature_masks given for modalities without features: {sorted(unknown)}")
        for modality, features in (item_features or {}).items():
            features, mask = _validate_features(modality, features, masks.get(modality), num_items)
            self.item_features[modality] = features
            self.item_feature_masks[modality] = mask

        self._adjacency: Tensor | None = None  # built on first use, then reused
        self._adjacency_csr: Tensor | None = None
        self._adjacency_blocks: BipartiteAdjacency | None = None

    # ------------------------------------------------------------------ sizes and degrees
    @property
    def num_nodes(self) -> int:
        """U + I, the size of the homogeneous bipartite graph."""
        return self.num_users + self.num_items

    @property
    def num_interactions(self) -> int:
        """Number of unique (user, item) training edges E."""
        return int(self.user_index.numel())

    @property
    def cold_start_users(self) -> Tensor:
        """BoolTensor [U]: ``True`` for users with no training interaction."""
        return self.user_degree == 0

    @property
    def modalities(self) -> tuple[str, ...]:
        """Names of the feature modalities carried by the graph (the ``"id"`` modality needs none)."""
        return tuple(self.item_features)

    @property
    def device(self) -> torch.device:
        return self.user_index.device

    # ------------------------------------------------------------------ adjacency
    @property
    def adjacency(self) -> Tensor:
        r"""Sparse COO [U + I, U + I]: :math:`D^{-1/2} A D^{-1/2}`, built once and cached."""
        if self._adjacency is None:
            self._adjacency = normalized_bipartite_adjacency(
                self.user_index, self.item_index, self.num_users, self.num_items, self.edge_weight
            )
        return self._adjacency

    @property
    def adjacency_csr(self) -> Tensor:
        r"""Sparse CSR [U + I, U + I]: the same matrix as :attr:`adjacency`, built once and cached.

        What :class:`ModalSpecificGNN` propagates with: the product reads each row's entries
        contiguously, 1.2x faster than over COO on one CPU thread at 10^5 users
        (``benchmarks/scale.py``). Not pickled: a graph sent to another process rebuilds it on
        first use.
        """
        if self._adjacency_csr is None:
            with warnings.catch_warnings():
                # torch's "sparse CSR is in beta" notice: a product with a dense matrix is all it is used for.
                warnings.simplefilter("ignore", UserWarning)
                self._adjacency_csr = self.adjacency.to_sparse_csr()
        return self._adjacency_csr

    @property
    def adjacency_blocks(self) -> BipartiteAdjacency:
        r""":attr:`adjacency` as its two off-diagonal blocks, sparse CSR [U, I] and [I, U], built once
        and cached: what :class:`ModalSpecificGNN` propagates with (see :class:`BipartiteAdjacency`
        for why). Not pickled, like :attr:`adjacency_csr`.
        """
        if self._adjacency_blocks is None:
            # Built from the edges, already sorted by (user, item), rather than from :attr:`adjacency`:
            # coalescing the COO sorts all 2E entries, where this sorts E item indices once.
            user, item = self.user_index, self.item_index
            weight = torch.ones(user.numel(), device=user.device) if self.edge_weight is None else self.edge_weight
            user_scale = _inverse_sqrt(torch.zeros(self.num_users, device=user.device).index_add_(0, user, weight))
            item_scale = _inverse_sqrt(torch.zeros(self.num_items, device=user.device).index_add_(0, item, weight))
            by_item = torch.argsort(item, stable=True)  # each item's users stay in increasing order
            item_indptr = torch.zeros(self.num_items + 1, dtype=torch.long, device=user.device)
            item_indptr[1:] = torch.cumsum(self.item_degree, 0)
            # The products in :func:`normalized_bipartite_adjacency`'s order (row, then column), so
            # the blocks hold exactly its values.
            blocks = (
                _csr(self.seen_indptr, item, weight * user_scale[user] * item_scale[item], (self.num_users, self.num_items)),
                _csr(item_indptr, user[by_item], (weight * item_scale[item] * user_scale[user])[by_item],
                     (self.num_items, self.num_users)),
            )
            self._adjacency_blocks = BipartiteAdjacency(*blocks)
        return self._adjacency_blocks

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["_adjacency_csr"] = None
        state["_adjacency_blocks"] = None
        return state

    def bipartite_edge_index(self) -> Tensor:
        """LongTensor [2, 2E] over U + I nodes, both directions (items shifted by U).

        This is the ``edge_index`` PyG's homogeneous models expect, e.g.
        ``torch_geometric.nn.models.LightGCN(graph.num_nodes, 64, 3)(graph.bipartite_edge_index())``.
        """
        item_nodes = self.item_index + self.num_users
        return torch.stack(
            [torch.cat([self.user_index, item_nodes]), torch.cat([item_nodes, self.user_index])]
        )

    # ------------------------------------------------------------------ seen items
    def seen_items(self, user: int) -> Tensor:
        """LongTensor [deg(user)]: the training items of one user, sorted."""
        if not 0 <= int(user) < self.num_users:
            raise IndexError(f"user {user} out of range [0, {self.num_users})")
        return self.item_index[self.seen_indptr[user] : self.seen_indptr[user + 1]]

    def seen_mask(self, users: Tensor) -> Tensor:
        """BoolTensor [B, I]: ``True`` where ``users[b]`` has a training interaction with the item.

        Dense only over the requested batch, so memory stays O(B * I).
        """
        users = _as_index_vector(users, "users")
        _check_range(users, self.num_users, "users", "num_users")
        starts = self.seen_indptr[users]
        counts = self.seen_indptr[users + 1] - starts
        rows = torch.repeat_interleave(torch.arange(users.numel(), device=users.device), counts)
        # position of each gathered edge inside the CSR: start of its row + offset within the row
        offsets = torch.arange(int(counts.sum()), device=users.device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts
        )
        cols = self.item_index[torch.repeat_interleave(starts, counts) + offsets]
        mask = torch.zeros(users.numel(), self.num_items, dtype=torch.bool, device=users.device)
        mask[rows, cols] = True
        return mask

    def has_interaction(self, users: Tensor, items: Tensor) -> Tensor:
        """BoolTensor [B]: whether each (users[b], items[b]) pair is a training edge."""
        keys = self._edge_keys
        query = users.long() * self.num_items + items.long()
        pos = torch.searchsorted(keys, query).clamp_max(keys.numel() - 1)
        return keys[pos] == query

    # ------------------------------------------------------------------ conversion
    def to(self, device: torch.device | str) -> InteractionGraph:
        """A copy with every tensor (and the cached adjacency, if built) on ``device``."""
        other = InteractionGraph.__new__(InteractionGraph)
        other.num_users, other.num_items = self.num_users, self.num_items
        for name in ("user_index", "item_index", "user_degree", "item_degree", "seen_indptr", "_edge_keys"):
            setattr(other, name, getattr(self, name).to(device))
        other.item_features = {m: x.to(device) for m, x in self.item_features.items()}
        other.item_feature_masks = {m: x.to(device) for m, x in self.item_feature_masks.items()}
        other.edge_weight = None if self.edge_weight is None else self.edge_weight.to(device)
        other._adjacency = None if self._adjacency is None else self._adjacency.to(device)
        other._adjacency_csr = None  # rebuilt from the moved COO on first use
        other._adjacency_blocks = None
        return other

    def to_hetero_data(self) -> HeteroData:
        """A ``torch_geometric.data.HeteroData`` view of the graph.

        Node types ``"user"`` (``num_nodes``) and ``"item"`` (``num_nodes``; features as
        ``x_<modality>`` and masks as ``mask_<modality>``); edge types
        ``("user", "interacts", "item")`` and its reverse ``("item", "rev_interacts", "user")``.
        """
        # Lazy: PyG takes seconds to import and only this view needs it (see TYPE_CHECKING above).
        from torch_geometric.data import HeteroData

        data = HeteroData()
        data["user"].num_nodes = self.num_users
        data["item"].num_nodes = self.num_items
        for modality, features in self.item_features.items():
            data["item"][f"x_{modality}"] = features
            data["item"][f"mask_{modality}"] = self.item_feature_masks[modality]
        edge_index = torch.stack([self.user_index, self.item_index])
        data["user", "interacts", "item"].edge_index = edge_index
        data["item", "rev_interacts", "user"].edge_index = edge_index.flip(0)
        return data

    @classmethod
    def from_hetero_data(
        cls,
        data: HeteroData,
        edge_type: tuple[str, str, str] = ("user", "interacts", "item"),
    ) -> InteractionGraph:
        """Inverse of :meth:`to_hetero_data`: reads ``edge_index`` of ``edge_type`` and item
        attributes named ``x_<modality>`` (with optional ``mask_<modality>``)."""
        src_type, _, dst_type = edge_type
        edge_index = data[edge_type].edge_index
        item_store = data[dst_type]
        features = {k[2:]: v for k, v in item_store.items() if k.startswith("x_")}
        masks = {k[5:]: v for k, v in item_store.items() if k.startswith("mask_")}
        return cls(
            edge_index[0],
            edge_index[1],
            data[src_type].num_nodes,
            item_store.num_nodes,
            item_features=features,
            item_feature_masks=masks,
        )

    def __repr__(self) -> str:
        feats = ", ".join(
            f"{m}: {tuple(x.shape)} ({int(self.item_feature_masks[m].sum())} present)"
            for m, x in self.item_features.items()
        )
        return (
            f"InteractionGraph(num_users={self.num_users}, num_items={self.num_items}, "
            f"num_interactions={self.num_interactions}, cold_start_users={int(self.cold_start_users.sum())}"
            f"{', ' + feats if feats else ''})"
        )


def _as_index_vector(index: Tensor, name: str) -> Tensor:
    if not isinstance(index, Tensor):
        index = torch.as_tensor(index)
    if index.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor, got shape {tuple(index.shape)}")
    if index.is_floating_point() or index.dtype == torch.bool or index.is_complex():
        raise ValueError(f"{name} must hold integer ids, got dtype {index.dtype}")
    return index.long()


def _check_edge_weight(edge_weight: Tensor, num_edges: int) -> Tensor:
    if not isinstance(edge_weight, Tensor):
        edge_weight = torch.as_tensor(edge_weight)
    if edge_weight.shape != (num_edges,):
        raise ValueError(f"edge_weight must be a 1-D tensor of {num_edges} weights, got shape {tuple(edge_weight.shape)}")
    edge_weight = edge_weight.float()
    if not torch.isfinite(edge_weight).all() or (edge_weight < 0).any():
        raise ValueError("edge_weight must hold finite weights >= 0")
    return edge_weight


def _check_range(index: Tensor, size: int, name: str, size_name: str) -> None:
    if index.numel() == 0:
        return
    low, high = int(index.min()), int(index.max())
    if low < 0 or high >= size:
        bad = low if low < 0 else high
        raise ValueError(f"{name} contains id {bad}, outside [0, {size_name}={size})")


def _validate_features(
    modality: str, features: Tensor, mask: Tensor | None, num_items: int
) -> tuple[Tensor, Tensor]:
    if not isinstance(features, Tensor) or features.dim() != 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"item_features[{modality!r}] must be a 2-D tensor [num_items, d], got {shape}")
    if features.size(0) != num_items:
        raise ValueError(f"item_features[{modality!r}] has {features.size(0)} rows but num_items={num_items}")
    features = features.float()
    finite_rows = torch.isfinite(features).all(dim=1)
    if mask is None:
        mask = finite_rows
    else:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != (num_items,):
            got = (tuple(mask.shape), mask.dtype) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(
                f"item_feature_masks[{modality!r}] must be a BoolTensor of shape ({num_items},), got {got}"
            )
        bad = mask & ~finite_rows
        if bad.any():
            first = int(bad.nonzero()[0])
            raise ValueError(
                f"item_features[{modality!r}] has non-finite values on item {first}, which its mask marks present"
            )
    # Zero the missing rows: models replace them by a learned vector, but a NaN times zero is
    # still NaN, so they must not reach any matmul.
    features = torch.where(mask.unsqueeze(1), features, torch.zeros((), dtype=features.dtype))
    return features, mask.clone()
