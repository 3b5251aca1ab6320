"""``ModalSpecificGNN``: one LightGCN-style propagation per modality over the same user–item graph."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .graph import InteractionGraph
from .losses import bpr_loss, info_nce_loss, l2_regularization, modality_dropout_mask
from .propagation import propagate

__all__ = ["ModalSpecificGNN", "ModalEmbeddings", "UserPreferences", "LossTerms", "ID_MODALITY"]

ID_MODALITY = "id"
"""Name of the free-embedding modality (no item features; item identity only)."""

ContrastiveMode = Literal["within_modality", "cross_modality"]


@dataclass(frozen=True)
class ModalEmbeddings:
    """Output of :meth:`ModalSpecificGNN.forward`; every dict is keyed by modality name.

    Attributes:
        users: ``{modality: FloatTensor [U, d]}`` propagated user embeddings.
        items: ``{modality: FloatTensor [I, d]}`` propagated item embeddings.
        user_ego: ``{modality: FloatTensor [U, d]}`` layer-0 user embeddings (the parameters).
        item_ego: ``{modality: FloatTensor [I, d]}`` layer-0 item embeddings (free ID rows, or
            projected features with the learned "missing" vector on items lacking the modality).
        stacked: FloatTensor [U + I, M * d] or None: the propagated embeddings of every node
            (users first, then items), modalities side by side in :attr:`ModalSpecificGNN.modalities`
            order; ``users`` and ``items`` are views of it. :meth:`ModalSpecificGNN.forward` sets it.
        stacked_ego: FloatTensor [U + I, M * d] or None: the layer-0 embeddings laid out alike.
    """

    users: dict[str, Tensor]
    items: dict[str, Tensor]
    user_ego: dict[str, Tensor]
    item_ego: dict[str, Tensor]
    stacked: Tensor | None = None
    stacked_ego: Tensor | None = None

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.users)


@dataclass(frozen=True)
class UserPreferences:
    """Per-modality user preference vectors, the input to quantisation and generation.

    Attributes:
        embeddings: ``{modality: FloatTensor [U, d]}``.
        cold_start: BoolTensor [U], ``True`` for users without training interactions; their
            vectors are inferred (from ``cold_start_history`` items, or the population prior).
        from_prior: BoolTensor [U], the cold-start users that had no items at all and received
            the population prior (the mean preference of warm users).
    """

    embeddings: dict[str, Tensor]
    cold_start: Tensor
    from_prior: Tensor

    def __getitem__(self, modality: str) -> Tensor:
        return self.embeddings[modality]


@dataclass(frozen=True)
class LossTerms:
    """Components of :meth:`ModalSpecificGNN.loss_terms`; ``total`` is what to backpropagate.

    ``total = bpr + sum_m l2_weight_m * l2_m + contrastive_weight * contrastive``, where
    ``l2_weight_m`` is ``id_l2_weight`` for the id modality and ``l2_weight`` otherwise; ``l2`` is
    the unweighted ``sum_m l2_m`` (unweighted values are stored so they log on a comparable scale).
    """

    total: Tensor
    bpr: Tensor
    l2: Tensor
    contrastive: Tensor


class ModalSpecificGNN(nn.Module):
    r"""Modal-specific graph preference encoder.

    Each modality ``m`` (the free ``"id"`` modality plus one per item-feature modality such as
    ``"visual"`` and ``"textual"``) has its own layer-0 embeddings:

    - users: a free embedding table [U, d];
    - items: a free table for ``"id"``; otherwise a projection (linear, or a 2-layer MLP) of the
      item's features [I, d_m] -> [I, d], with a learned "missing" vector for items whose
      feature mask is ``False``.

    Every modality is propagated separately over the same normalised user–item graph
    (LightGCN: K layers, mean of the layer outputs). Keeping modalities apart through the graph is
    what makes the visual user vector describe visual taste and the textual one textual taste.

    Score of a (user, item) pair: a learned convex combination of per-modality dot products,

    .. math::
        s(u, i) = \sum_m w_m \langle e^m_u, e^m_i \rangle, \quad w = \mathrm{softmax}(\theta).

    Args:
        num_users: U.
        num_items: I.
        embedding_dim: d, shared by all modalities.
        num_layers: K propagation layers (0 = matrix factorisation with projected features).
        feature_dims: ``{modality: d_m}`` for the item-feature modalities, e.g.
            ``{"visual": 512, "textual": 384}``; must match ``graph.item_features``.
        use_id_modality: include the free ``"id"`` modality (first in :attr:`modalities`).
        projection_hidden_dim: ``None`` for a linear projection of features, else the hidden
            width of a Linear-GELU-Linear projection.
        modality_dropout: probability of dropping a modality's term from an example's score
            during training (:meth:`loss_terms` in ``train()`` mode only), so the combined score
            cannot lean on a single modality.
        l2_weight: weight of :func:`~prefgraph.l2_regularization` on the batch's ego embeddings.
        id_l2_weight: the same for the ``"id"`` modality's ego embeddings (``None``: ``l2_weight``).
            Free item ids can memorise the training graph where feature modalities cannot, so a
            stronger penalty there keeps the id view to what the features do not explain.
        contrastive_weight: weight of the optional InfoNCE term (0 disables it).
        contrastive_temperature: InfoNCE temperature.
        contrastive_mode: ``"within_modality"`` (default) contrasts each modality's user vector
            with the *same* modality's positive-item vector (in-batch negatives). No term couples
            two modalities, so it sharpens each view without pulling them together and modal
            specificity is preserved. ``"cross_modality"`` aligns one user's views across
            modalities (other users are negatives): more consistent views, at the cost of
            specificity (it rewards views that agree), so keep its weight small (<= 0.05).

    Example::

        model = ModalSpecificGNN(graph.num_users, graph.num_items, 64, 3,
                                 feature_dims={"visual": 512, "textual": 384})
        emb = model(graph)
        loss = model.loss(emb, users, pos_items, neg_items)
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_dim: int = 64,
        num_layers: int = 3,
        feature_dims: Mapping[str, int] | None = None,
        *,
        use_id_modality: bool = True,
        projection_hidden_dim: int | None = None,
        modality_dropout: float = 0.0,
        l2_weight: float = 1e-4,
        id_l2_weight: float | None = None,
        contrastive_weight: float = 0.0,
        contrastive_temperature: float = 0.2,
        contrastive_mode: ContrastiveMode = "within_modality",
    ) -> None:
        super().__init__()
        feature_dims = dict(feature_dims or {})
        if num_users <= 0 or num_items <= 0 or embedding_dim <= 0:
            raise ValueError("num_users, num_items and embedding_dim must be positive")
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        if ID_MODALITY in feature_dims:
            raise ValueError(
                f"{ID_MODALITY!r} is reserved for the free-embedding modality; rename the feature"
            )
        for name, dim in feature_dims.items():
            if not name.isidentifier():
                raise ValueError(f"modality names must be identifiers, got {name!r}")
            if int(dim) <= 0:
                raise ValueError(f"feature_dims[{name!r}] must be positive, got {dim}")
        if not use_id_modality and not feature_dims:
            raise ValueError("no modality: enable use_id_modality or give feature_dims")
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {modality_dropout}")
        if contrastive_mode not in ("within_modality", "cross_modality"):
            raise ValueError(f"unknown contrastive_mode {contrastive_mode!r}")
        if (
            contrastive_mode == "cross_modality"
            and contrastive_weight > 0
            and len(feature_dims) + use_id_modality < 2
        ):
            raise ValueError("contrastive_mode='cross_modality' needs at least two modalities")

        self.num_users = int(num_users)
        self.num_items = int(num_items)
        self.embedding_dim = int(embedding_dim)
        self.num_layers = int(num_layers)
        self.feature_dims = {m: int(d) for m, d in feature_dims.items()}
        self.use_id_modality = bool(use_id_modality)
        self.projection_hidden_dim = projection_hidden_dim
        self.modality_dropout = float(modality_dropout)
        self.l2_weight = float(l2_weight)
        self.id_l2_weight = self.l2_weight if id_l2_weight is None else float(id_l2_weight)
        self.contrastive_weight = float(contrastive_weight)
        self.contrastive_temperature = float(contrastive_temperature)
        self.contrastive_mode: ContrastiveMode = contrastive_mode

        self.modalities: tuple[str, ...] = ((ID_MODALITY,) if use_id_modality else ()) + tuple(feature_dims)
        self.user_embeddings = nn.ModuleDict(
            {m: nn.Embedding(num_users, embedding_dim) for m in self.modalities}
        )
        self.item_id_embedding = nn.Embedding(num_items, embedding_dim) if use_id_modality else None
        self.item_projections = nn.ModuleDict(
            {
                m: self._make_projection(d, embedding_dim, projection_hidden_dim)
                for m, d in feature_dims.items()
            }
        )
        self.missing_item_embeddings = nn.ParameterDict(
            {m: nn.Parameter(torch.zeros(embedding_dim)) for m in feature_dims}
        )
        # Softmax logits over modalities; zeros = equal weights at the start.
        self.modality_logits = nn.Parameter(torch.zeros(len(self.modalities)))
        self.reset_parameters()

    @staticmethod
    def _make_projection(in_dim: int, out_dim: int, hidden_dim: int | None) -> nn.Module:
        if hidden_dim is None:
            return nn.Linear(in_dim, out_dim)
        return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))

    def reset_parameters(self) -> None:
        """Re-initialise: N(0, 0.1^2) embeddings (LightGCN's scale), default Linear init."""
        for table in self.user_embeddings.values():
            nn.init.normal_(table.weight, std=0.1)
        if self.item_id_embedding is not None:
            nn.init.normal_(self.item_id_embedding.weight, std=0.1)
        for vector in self.missing_item_embeddings.values():
            nn.init.normal_(vector, std=0.1)
        for projection in self.item_projections.values():
            for layer in projection.modules():
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()
        nn.init.zeros_(self.modality_logits)

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments; ``ModalSpecificGNN(**cfg)`` rebuilds the model."""
        return {
            "num_users": self.num_users,
            "num_items": self.num_items,
            "embedding_dim": self.embedding_dim,
            "num_layers": self.num_layers,
            "feature_dims": dict(self.feature_dims),
            "use_id_modality": self.use_id_modality,
            "projection_hidden_dim": self.projection_hidden_dim,
            "modality_dropout": self.modality_dropout,
            "l2_weight": self.l2_weight,
            "id_l2_weight": self.id_l2_weight,
            "contrastive_weight": self.contrastive_weight,
            "contrastive_temperature": self.contrastive_temperature,
            "contrastive_mode": self.contrastive_mode,
        }

    # ------------------------------------------------------------------ embeddings
    def item_ego_embeddings(self, graph: InteractionGraph) -> dict[str, Tensor]:
        """Layer-0 item embeddings ``{modality: [I, d]}`` before any propagation."""
        out: dict[str, Tensor] = {}
        for modality in self.modalities:
            if modality == ID_MODALITY:
                assert self.item_id_embedding is not None
                out[modality] = self.item_id_embedding.weight
                continue
            projected = self.item_projections[modality](graph.item_features[modality])
            present = graph.item_feature_masks[modality].unsqueeze(1)
            out[modality] = torch.where(present, projected, self.missing_item_embeddings[modality])
        return out

    def forward(self, graph: InteractionGraph) -> ModalEmbeddings:
        """Propagate every modality over ``graph``.

        Args:
            graph: the training graph; sizes must match the model, and it must carry
                ``item_features[m]`` [I, d_m] for every feature modality.

        Returns:
            :class:`ModalEmbeddings` with ``users[m]`` [U, d] and ``items[m]`` [I, d].
        """
        self._check_graph(graph)
        user_ego = {m: self.user_embeddings[m].weight for m in self.modalities}
        item_ego = self.item_ego_embeddings(graph)
        # One sparse matmul per layer for all modalities: propagation is column-wise linear, so
        # concatenating modalities along the feature axis keeps them exactly separate.
        stacked = torch.cat(
            [
                torch.cat([user_ego[m] for m in self.modalities], dim=1),
                torch.cat([item_ego[m] for m in self.modalities], dim=1),
            ],
            dim=0,
        )
        propagated = propagate(graph.adjacency_blocks, stacked, self.num_layers)
        user_out, item_out = propagated.split([self.num_users, self.num_items], dim=0)
        d = self.embedding_dim
        users = {m: user_out[:, k * d : (k + 1) * d] for k, m in enumerate(self.modalities)}
        items = {m: item_out[:, k * d : (k + 1) * d] for k, m in enumerate(self.modalities)}
        return ModalEmbeddings(users=users, items=items, user_ego=user_ego, item_ego=item_ego,
                               stacked=propagated, stacked_ego=stacked)

    def _check_graph(self, graph: InteractionGraph) -> None:
        if graph.num_users != self.num_users or graph.num_items != self.num_items:
            raise ValueError(
                f"graph has {graph.num_users} users / {graph.num_items} items but the model was built for "
                f"{self.num_users} / {self.num_items}"
            )
        for modality, dim in self.feature_dims.items():
            if modality not in graph.item_features:
                raise ValueError(
                    f"model expects item features {modality!r} but the graph has {list(graph.item_features)}"
                )
            got = graph.item_features[modality].size(1)
            if got != dim:
                raise ValueError(f"item_features[{modality!r}] has dim {got}, the model expects {dim}")

    # ------------------------------------------------------------------ scoring
    def modality_weights(self) -> Tensor:
        """FloatTensor [M]: softmax weights of the modalities in the score, ordered as :attr:`modalities`."""
        return torch.softmax(self.modality_logits, dim=0)

    def modal_scores(self, emb: ModalEmbeddings, users: Tensor, items: Tensor) -> Tensor:
        """Per-modality dot products, FloatTensor [..., M].

        ``users`` and ``items`` are index tensors of broadcastable shapes, e.g. [B] and [B], or
        [B, 1] and [B, N].
        """
        return torch.stack(
            [(emb.users[m][users] * emb.items[m][items]).sum(-1) for m in self.modalities], dim=-1
        )

    def score(
        self, emb: ModalEmbeddings, users: Tensor, items: Tensor, modality_mask: Tensor | None = None
    ) -> Tensor:
        """Combined score of (user, item) pairs, FloatTensor of the broadcast index shape.

        Args:
            emb: output of :meth:`forward`.
            users: LongTensor, e.g. [B].
            items: LongTensor broadcastable with ``users``, e.g. [B] or (with ``users[:, None]``) [B, N].
            modality_mask: optional BoolTensor [B, M] (``True`` = keep); dropped modalities leave
                the score and the remaining weights are renormalised per example.
        """
        return self._combine(self.modal_scores(emb, users, items), modality_mask)

    def _combine(self, per_modality: Tensor, modality_mask: Tensor | None) -> Tensor:
        """Per-modality scores [..., M] -> combined scores [...] (see :meth:`score`)."""
        weights = self.modality_weights()
        if modality_mask is None:
            return per_modality @ weights
        # Renormalised softmax over the kept modalities only (per example).
        logits = self.modality_logits.masked_fill(~modality_mask, float("-inf"))
        weights = torch.softmax(logits, dim=-1)  # [B, M]
        while weights.dim() < per_modality.dim():
            weights = weights.unsqueeze(-2)
        return (per_modality * weights).sum(-1)

    def score_all(self, emb: ModalEmbeddings, users: Tensor) -> Tensor:
        """Scores of ``users`` [B] against every item: FloatTensor [B, I] (no masking)."""
        weights = self.modality_weights()
        user_side = torch.cat(
            [weights[k] * emb.users[m][users] for k, m in enumerate(self.modalities)], dim=1
        )
        item_side = torch.cat([emb.items[m] for m in self.modalities], dim=1)
        return user_side @ item_side.t()

    @torch.no_grad()
    def scorer(
        self,
        graph: InteractionGraph,
        emb: ModalEmbeddings | None = None,
        cold_start_history: tuple[Tensor, Tensor] | None = None,
    ) -> Callable[[Tensor], Tensor]:
        """A full-ranking scorer ``users [B] -> scores [B, I]`` for :func:`prefgraph.evaluate_ranking`.

        Propagates once (or reuses ``emb``, the output of :meth:`forward` on ``graph``) and scores
        with :meth:`user_preferences`, so cold-start users are ranked from their inferred
        preference rather than an untrained table row. The scorer holds two matrices,
        ``[U, M*d]`` (modality-weighted user preferences) and ``[I, M*d]``, computed without
        gradients; recompute it after the parameters change.
        """
        if emb is None:
            emb = self(graph)
        prefs = self.user_preferences(graph, emb, cold_start_history)
        weights = self.modality_weights().detach()
        user_side = torch.cat([weights[k] * prefs[m] for k, m in enumerate(self.modalities)], dim=1).detach()
        item_side = torch.cat([emb.items[m] for m in self.modalities], dim=1).detach()
        return lambda users: user_side[users] @ item_side.t()

    # ------------------------------------------------------------------ training objective
    def loss_terms(
        self, emb: ModalEmbeddings, users: Tensor, pos_items: Tensor, neg_items: Tensor
    ) -> LossTerms:
        """BPR + L2 on the batch's ego embeddings + optional InfoNCE, with modality dropout.

        Args:
            emb: output of :meth:`forward` on the training graph.
            users: LongTensor [B].
            pos_items: LongTensor [B], an interacted item of each user.
            neg_items: LongTensor [B] or [B, N], sampled non-interacted items
                (see :func:`prefgraph.sample_bpr_batch`).
        """
        if users.shape != pos_items.shape or users.dim() != 1 or neg_items.shape[0] != users.shape[0]:
            raise ValueError(
                f"expected users [B], pos_items [B], neg_items [B] or [B, N]; got {tuple(users.shape)}, "
                f"{tuple(pos_items.shape)}, {tuple(neg_items.shape)}"
            )
        batch_size = users.numel()
        modality_mask = None
        if self.training and self.modality_dropout > 0 and len(self.modalities) > 1:
            # The same mask for an example's positive and negatives: BPR compares like with like.
            modality_mask = modality_dropout_mask(
                batch_size, len(self.modalities), self.modality_dropout, device=users.device
            )
        if emb.stacked is not None and emb.stacked_ego is not None:
            pos_scores, neg_scores, l2_terms = self._batch_terms(emb.stacked, emb.stacked_ego, users, pos_items, neg_items)
            pos_scores = self._combine(pos_scores, modality_mask)
            neg_scores = self._combine(neg_scores, modality_mask)
        else:  # embeddings assembled by hand: per-modality tables only
            pos_scores = self.score(emb, users, pos_items, modality_mask)
            neg_users = users.unsqueeze(1) if neg_items.dim() == 2 else users
            neg_scores = self.score(emb, neg_users, neg_items, modality_mask)
            l2_terms = [
                l2_regularization(emb.user_ego[m][users], emb.item_ego[m][pos_items], emb.item_ego[m][neg_items],
                                  batch_size=batch_size)
                for m in self.modalities
            ]
        ranking = bpr_loss(pos_scores, neg_scores)

        l2 = weighted_l2 = ranking.new_zeros(())
        for m, term in zip(self.modalities, l2_terms, strict=True):
            l2 = l2 + term
            weighted_l2 = weighted_l2 + (self.id_l2_weight if m == ID_MODALITY else self.l2_weight) * term

        contrastive = ranking.new_zeros(())
        if self.contrastive_weight > 0:
            contrastive = self._contrastive(emb, users, pos_items)
        total = ranking + weighted_l2 + self.contrastive_weight * contrastive
        return LossTerms(total=total, bpr=ranking.detach(), l2=l2.detach(), contrastive=contrastive.detach())

    def _batch_terms(
        self, stacked: Tensor, stacked_ego: Tensor, users: Tensor, pos_items: Tensor, neg_items: Tensor
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Per-modality positive scores [B, M], negative scores [B, M] or [B, N, M] and the L2 term
        of each modality (a list of M scalars), from one gather of the batch's rows of ``stacked``
        and ``stacked_ego`` ([U + I, M * d] each) instead of one per modality and role: each
        gather's backward writes a full-size gradient, so on a large graph their number counts."""
        batch_size, m, d = users.numel(), len(self.modalities), self.embedding_dim
        nodes = torch.cat([users, pos_items + self.num_users, neg_items.reshape(-1) + self.num_users])
        pos_scores, neg_scores = _GatheredScores.apply(stacked, nodes, batch_size, m)
        if neg_items.dim() == 1:
            neg_scores = neg_scores.squeeze(1)
        # l2_regularization of each modality's rows: 0.5 * sum of squares / B, a row counted as often
        # as the batch names it. Weighting every row by that count reads the table once where a
        # gather of the batch's rows (more rows than the table: 3B > U + I at 32 steps an epoch)
        # would copy them and scatter their gradient back; summing rows first keeps the backward's
        # broadcast along one axis (a [rows, M, d] sum over (0, 2) made it 4x slower).
        counts = torch.bincount(nodes, minlength=stacked_ego.size(0)).to(stacked_ego.dtype)
        squares = _CountWeightedSquares.apply(stacked_ego, counts).view(m, d).sum(1)
        return pos_scores, neg_scores, list((0.5 * squares / batch_size).unbind())

    def loss(self, emb: ModalEmbeddings, users: Tensor, pos_items: Tensor, neg_items: Tensor) -> Tensor:
        """Scalar training loss (``loss_terms(...).total``)."""
        return self.loss_terms(emb, users, pos_items, neg_items).total

    def _contrastive(self, emb: ModalEmbeddings, users: Tensor, pos_items: Tensor) -> Tensor:
        t = self.contrastive_temperature
        if self.contrastive_mode == "within_modality":
            terms = [info_nce_loss(emb.users[m][users], emb.items[m][pos_items], t) for m in self.modalities]
        else:
            # A batch may repeat a user; unique rows avoid treating a user as its own negative.
            unique_users = torch.unique(users)
            terms = []
            for a, first in enumerate(self.modalities):
                for second in self.modalities[a + 1 :]:
                    q, k = emb.users[first][unique_users], emb.users[second][unique_users]
                    terms.append(0.5 * (info_nce_loss(q, k, t) + info_nce_loss(k, q, t)))
        return torch.stack(terms).mean()

    # ------------------------------------------------------------------ inference
    def user_preferences(
        self,
        graph: InteractionGraph,
        emb: ModalEmbeddings | None = None,
        cold_start_history: tuple[Tensor, Tensor] | None = None,
    ) -> UserPreferences:
        """Per-modality preference vectors for every user, cold-start users included.

        Warm users (at least one edge in ``graph``) get their propagated embedding. A cold-start
        user's own table row was never trained, so instead it gets the mean propagated embedding
        of the items in ``cold_start_history`` that belong to it (a fold-in from its few items),
        or, with none, the population prior: the mean preference of the warm users.

        Args:
            graph: the training graph (defines who is cold-start).
            emb: output of :meth:`forward` on ``graph``; computed if omitted.
            cold_start_history: optional ``(user_index [P], item_index [P])`` interactions that
                are not in the training graph (e.g. a new user's first clicks). Pairs of warm
                users are ignored.

        Returns:
            :class:`UserPreferences` with ``embeddings[m]`` [U, d], ``cold_start`` [U],
            ``from_prior`` [U].
        """
        if emb is None:
            emb = self(graph)
        cold = graph.cold_start_users
        history_count = torch.zeros(self.num_users, dtype=torch.long, device=cold.device)
        hist_users = hist_items = None
        if cold_start_history is not None:
            hist_users, hist_items = _validate_pairs(
                cold_start_history, self.num_users, self.num_items, graph.device
            )
            keep = cold[hist_users]
            hist_users, hist_items = hist_users[keep], hist_items[keep]
            history_count = torch.bincount(hist_users, minlength=self.num_users)
        from_history = cold & (history_count > 0)
        from_prior = cold & (history_count == 0)

        preferences: dict[str, Tensor] = {}
        for m in self.modalities:
            users = emb.users[m]
            prior = users[~cold].mean(dim=0)  # the graph is never empty, so some user is warm
            out = torch.where(from_prior.unsqueeze(1), prior, users)
            if hist_users is not None and hist_users.numel() > 0:
                summed = torch.zeros_like(users).index_add(0, hist_users, emb.items[m][hist_items])
                folded = summed / history_count.clamp_min(1).unsqueeze(1).to(summed.dtype)
                out = torch.where(from_history.unsqueeze(1), folded, out)
            preferences[m] = out
        return UserPreferences(embeddings=preferences, cold_start=cold.clone(), from_prior=from_prior)

    @torch.no_grad()
    def recommend(
        self,
        graph: InteractionGraph,
        users: Tensor,
        k: int = 10,
        exclude_seen: bool = True,
        cold_start_history: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Top-``k`` items for each of ``users``: LongTensor [B, k], best first.

        Cold-start users are scored with their inferred preference (see :meth:`user_preferences`).
        With ``exclude_seen`` the training items and the user's items in ``cold_start_history``
        are never recommended; if a user has fewer than ``k`` unseen
        items the tail of its row holds seen items.
        """
        if not 0 < k <= self.num_items:
            raise ValueError(f"k must be in [1, num_items={self.num_items}], got {k}")
        users = torch.as_tensor(users, dtype=torch.long, device=graph.device).reshape(-1)
        emb = self(graph)
        prefs = self.user_preferences(graph, emb, cold_start_history)
        scored = ModalEmbeddings(
            users=prefs.embeddings, items=emb.items, user_ego=emb.user_ego, item_ego=emb.item_ego
        )
        scores = self.score_all(scored, users)
        if exclude_seen:
            seen = graph.seen_mask(users)
            if cold_start_history is not None:
                hist_users, hist_items = _validate_pairs(
                    cold_start_history, self.num_users, self.num_items, graph.device
                )
                rows, cols = (users.unsqueeze(1) == hist_users.unsqueeze(0)).nonzero(as_tuple=True)
                seen[rows, hist_items[cols]] = True
            scores = scores.masked_fill(seen, float("-inf"))
        return scores.topk(k, dim=1).indices

    def extra_repr(self) -> str:
        return (
            f"num_users={self.num_users}, num_items={self.num_items}, embedding_dim={self.embedding_dim}, "
            f"num_layers={self.num_layers}, modalities={self.modalities}"
        )


def _validate_pairs(
    pairs: tuple[Tensor, Tensor], num_users: int, num_items: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    users, items = (torch.as_tensor(x, device=device).long().reshape(-1) for x in pairs)
    if users.numel() != items.numel():
        raise ValueError(f"user and item index lengths differ: {users.numel()} vs {items.numel()}")
    if users.numel() and (users.min() < 0 or users.max() >= num_users):
        raise ValueError(f"user ids must be in [0, {num_users})")
    if items.numel() and (items.min() < 0 or items.max() >= num_items):
        raise ValueError(f"item ids must be in [0, {num_items})")
    return users, items


class _CountWeightedSquares(torch.autograd.Function):
    """``counts @ x.square()`` [D] for ``x`` [N, D] and ``counts`` [N] (a constant), with the gradient
    ``2 counts[:, None] x g`` written in two passes over [N, D]: autograd's way through ``square``
    and the product builds the outer product ``counts g`` and three more [N, D] temporaries."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, counts: Tensor) -> Tensor:
        ctx.save_for_backward(x, counts)
        return counts @ x.square()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        x, counts = ctx.saved_tensors
        return torch.mul(x, counts.unsqueeze(1)).mul_(2 * grad), None


class _GatheredScores(torch.autograd.Function):
    """Per-modality dot products of a batch's users with their positive and negative items, from
    one gather of their rows of ``table`` [N, M * d]: ``nodes`` [B + B + B * K] is the users, the
    positives and the negatives (K per user) as rows of ``table``. Returns positive scores [B, M]
    and negative scores [B, K, M].

    The backward writes the three gradients of the gathered rows into one buffer and adds it into
    ``table``'s gradient with one scatter: autograd's way through the gather, split and products
    makes a gradient per product, sums the user rows' two, and concatenates the three parts before
    its scatter, each a pass over [3B, M * d] (at 10^6 users, 2 GB a step).
    """

    @staticmethod
    def forward(ctx: Any, table: Tensor, nodes: Tensor, batch_size: int, num_modalities: int) -> tuple[Tensor, Tensor]:
        m, d = num_modalities, table.size(1) // num_modalities
        # index_select copies whole rows where table[nodes] goes element by element.
        rows = torch.index_select(table, 0, nodes).view(-1, m, d)
        user_rows, pos_rows, neg_rows = rows.split([batch_size, batch_size, rows.size(0) - 2 * batch_size])
        neg_rows = neg_rows.view(batch_size, -1, m, d)
        ctx.save_for_backward(rows, nodes)
        ctx.batch_size, ctx.num_rows = batch_size, table.size(0)
        return (user_rows * pos_rows).sum(-1), (user_rows.unsqueeze(1) * neg_rows).sum(-1)

    @staticmethod
    def backward(ctx: Any, pos_grad: Tensor, neg_grad: Tensor) -> tuple[Tensor, None, None, None]:
        rows, nodes = ctx.saved_tensors
        b, (_, m, d) = ctx.batch_size, rows.shape
        user_rows, pos_rows, neg_rows = rows.split([b, b, rows.size(0) - 2 * b])
        neg_rows = neg_rows.view(b, -1, m, d)
        grad_rows = torch.empty_like(rows)
        user_grad, pos_grad_rows, neg_grad_rows = grad_rows.split([b, b, rows.size(0) - 2 * b])
        pos_grad, neg_grad = pos_grad.unsqueeze(-1), neg_grad.unsqueeze(-1)  # [B, M, 1], [B, K, M, 1]
        torch.mul(pos_rows, pos_grad, out=user_grad)
        if neg_rows.size(1) == 1:
            user_grad.addcmul_(neg_rows.squeeze(1), neg_grad.squeeze(1))
        else:
            user_grad.add_((neg_rows * neg_grad).sum(1))
        torch.mul(user_rows, pos_grad, out=pos_grad_rows)
        torch.mul(user_rows.unsqueeze(1), neg_grad, out=neg_grad_rows.view(b, -1, m, d))
        grad = rows.new_zeros(ctx.num_rows, m * d).index_add_(0, nodes, grad_rows.view(-1, m * d))
        return grad, None, None, None
