"""Recommendation and personalised product search from the preference stage's model."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pmg.config import load_config
from pmg.features import FeatureEncoderSpec, encode_texts
from pmg.preference.stage import PreferenceConfig
from pmg.runs import RunError
from pmg.tasks.config import SearchConfig
from pmg.tasks.state import PreferenceState, history_items, lookup_user
from prefgraph import topk_items

__all__ = ["RankedItem", "Recommendation", "SearchHit", "SearchResult", "recommend", "search"]


@dataclass(frozen=True)
class RankedItem:
    item_id: str
    title: str
    score: float


@dataclass(frozen=True)
class Recommendation:
    """Top-k items for a user, best first; ``cold_start``: the user had no training interaction."""

    user_id: str
    cold_start: bool
    items: list[RankedItem]


@dataclass(frozen=True)
class SearchHit(RankedItem):
    """``score`` mixes the two parts, each a z-score over the catalog (see ``SearchConfig``)."""

    relevance: float  # cosine of query and item text
    preference: float  # the preference model's score for the user


@dataclass(frozen=True)
class SearchResult:
    user_id: str
    query: str
    query_weight: float
    items: list[SearchHit]


def _check_k(k: int, num_items: int) -> None:
    if not 1 <= k <= num_items:
        raise ValueError(f"-k must be in [1, {num_items}] (the catalog's items), got {k}")


def recommend(state: PreferenceState, user_id: str, k: int = 10) -> Recommendation:
    """The ``k`` best-scored items ``user_id`` has not interacted with (in any split), best first.

    Scores are the model's full ranking (``ModalSpecificGNN.scorer``, cold-start users from their
    inferred preference). With fewer than ``k`` unseen items, the list is shorter.
    """
    data = state.data
    _check_k(k, data.num_items)
    user = lookup_user(state.run, data, user_id)
    scores = state.scores(user)  # [I]
    seen = torch.zeros(1, data.num_items, dtype=torch.bool)
    seen[0, torch.from_numpy(history_items(data, user))] = True
    unseen = int((~seen).sum())
    top = topk_items(scores.unsqueeze(0), min(k, max(unseen, 1)), exclude=seen)[0][:unseen]
    items = [RankedItem(data.items[i].item_id, data.items[i].title, float(scores[i])) for i in top.tolist()]
    return Recommendation(user_id, state.is_cold_start(user), items)


def _zscore(values: torch.Tensor) -> torch.Tensor:
    """``values`` [I] standardised (zero mean, unit deviation; a constant vector gives zeros)."""
    return (values - values.mean()) / values.std().clamp_min(1e-8)


def query_encoder(state: PreferenceState) -> FeatureEncoderSpec:
    """The textual feature encoder the preference stage used for items (from its ``config.yaml``)."""
    path = state.run.stage_dir("preference") / "config.yaml"
    if not path.is_file():
        raise RunError(f"{path} is missing (runs before pmg recorded it); rerun `pmg pipeline --run {state.run.root} "
                       "--force preference` so the query can be encoded like the items' texts")
    features = load_config(PreferenceConfig, path).features
    if "textual" not in state.model.feature_dims or not features.textual:
        raise RunError(f"the preference model of {state.run.root} has no textual item features to match a query "
                       "against; set preference.features.textual (e.g. minilm) and rerun --force preference")
    return FeatureEncoderSpec("textual", features.textual, batch_size=features.batch_size,
                              local_files_only=features.local_files_only, trust_remote_code=features.trust_remote_code)


def search(state: PreferenceState, user_id: str, query: str, config: SearchConfig, k: int = 10) -> SearchResult:
    """Items ranked for ``query`` and ``user_id``: ``config.query_weight`` · z(relevance) + the rest · z(preference).

    Relevance is the cosine between the query and each item's text, both encoded by the
    preference stage's textual encoder (items without text: 0). Items the user has seen are kept:
    search may look for them again.
    """
    config.validate()
    data = state.data
    _check_k(k, data.num_items)
    user = lookup_user(state.run, data, user_id)
    if not query.strip():
        raise ValueError("--query is empty")
    encoded = encode_texts([query], query_encoder(state))[0]  # [d_t]
    if not encoded.norm() > 0:
        raise ValueError(f"--query {query!r} has nothing the text encoder can read (no letter or digit)")
    item_text = state.graph.item_features["textual"]  # [I, d_t], L2-normalised rows (zero without text)
    relevance = item_text @ torch.nn.functional.normalize(encoded, dim=0)  # [I]
    preference = state.scores(user)  # [I]
    combined = config.query_weight * _zscore(relevance) + (1.0 - config.query_weight) * _zscore(preference)
    top = combined.topk(k).indices.tolist()
    hits = [SearchHit(data.items[i].item_id, data.items[i].title, float(combined[i]), float(relevance[i]),
                      float(preference[i])) for i in top]
    return SearchResult(user_id, query, config.query_weight, hits)
