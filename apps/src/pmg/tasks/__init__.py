"""Unified personalization tasks from one user state (the UniMP setting), on a completed run.

- ``recommend``: top-k unseen items from the preference stage's model.
- ``search``: query relevance (the preference stage's text encoder) mixed with the user's preference.
- ``rate``: a rating head on the preference embeddings (``rating_model``), RMSE against the mean.
- ``explain``: a review-style explanation from the generator stage's text adapter with the user's tokens.
- ``reference_tokens``: the user's tokens with the history weighted by similarity to a reference item
  (``pmg generate --reference``).

Each function returns a dataclass; ``pmg.tasks.cli`` prints them, and handles ``pmg generate``
(the generator or reward stage's adapters, through ``pmg.generator.generate``). The tasks read what
the stages up to the reward stage wrote and import their modules; only ``pmg evaluate``, above
them, imports a task module (``pmg.tasks.state``, for the ranking it evaluates).
"""

from pmg.tasks.config import ExplainConfig, RatingConfig, ReferenceConfig, SearchConfig, TasksConfig
from pmg.tasks.generation import Explanation, ReferenceTokens, explain, reference_tokens, resolve_reference
from pmg.tasks.ranking import RankedItem, Recommendation, SearchHit, SearchResult, recommend, search
from pmg.tasks.rating import (
    RatingEvaluation,
    RatingHead,
    RatingModel,
    RatingPrediction,
    evaluate_rating,
    predict_rating,
    rating_model,
)
from pmg.tasks.state import PreferenceState, load_preference_state, lookup_item, lookup_user

__all__ = [
    "TasksConfig", "SearchConfig", "RatingConfig", "ExplainConfig", "ReferenceConfig",
    "PreferenceState", "load_preference_state", "lookup_user", "lookup_item",
    "RankedItem", "Recommendation", "SearchHit", "SearchResult", "recommend", "search",
    "RatingHead", "RatingModel", "RatingPrediction", "RatingEvaluation", "rating_model", "predict_rating", "evaluate_rating",
    "Explanation", "explain", "ReferenceTokens", "reference_tokens", "resolve_reference",
]
