"""Configuration of the unified tasks (``pmg recommend/search/rate/explain`` and ``pmg generate --reference``)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SearchConfig", "RatingConfig", "ExplainConfig", "ReferenceConfig", "TasksConfig"]


@dataclass
class SearchConfig:
    """``pmg search``: score = ``query_weight`` · z(query relevance) + (1 − ``query_weight``) · z(preference).

    Both terms are standardised over the catalog (z-scores) before mixing, since relevance is a
    cosine in [-1, 1] and the preference score an unbounded dot product. 1.0 ranks by the query
    alone (plain product search), 0.0 by the user's preference alone (recommendation).
    """

    query_weight: float = 0.7

    def validate(self) -> None:
        if not 0.0 <= self.query_weight <= 1.0:
            raise ValueError(f"search.query_weight must be in [0, 1], got {self.query_weight}")


@dataclass
class RatingConfig:
    """The rating head on the preference stage's embeddings (trained once per preference result).

    Input per (user, item): the per-modality products ``pref_u^m ⊙ item_i^m`` concatenated and
    standardised; an MLP with ``hidden_dim`` units (0: linear) predicts the rating minus the
    training mean. Full-batch Adam for ``epochs`` on the training ratings; the epoch with the best
    validation RMSE is kept.
    """

    hidden_dim: int = 32
    epochs: int = 300
    lr: float = 0.01
    weight_decay: float = 1e-3
    seed: int = 0

    def validate(self) -> None:
        if self.hidden_dim < 0 or self.epochs < 1:
            raise ValueError("rating.hidden_dim must be >= 0 (0: linear) and rating.epochs >= 1")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("rating.lr must be > 0 and rating.weight_decay >= 0")


@dataclass
class ExplainConfig:
    """``pmg explain``: the text adapter continues ``User <tokens> would love: <title> review:``.

    Greedy unless ``do_sample``; with sampling, ``seed`` makes the text reproducible.
    ``min_new_tokens`` keeps a barely trained LM from ending the text at once.
    """

    max_new_tokens: int = 32
    min_new_tokens: int = 4
    do_sample: bool = False
    temperature: float = 0.8
    seed: int = 0

    def validate(self) -> None:
        if not 1 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError("explain: need 1 <= min_new_tokens <= max_new_tokens")
        if self.temperature <= 0:
            raise ValueError("explain.temperature must be > 0")


@dataclass
class ReferenceConfig:
    """``pmg generate --reference``: the user's history weighted by similarity to the reference.

    Per modality, history items get ``softmax(cos(item, reference) / temperature)`` weights
    (prefgraph ``history_weights``, on item embeddings centred on the catalog mean); the
    weighted history mean is mixed into the user's
    preference, ``(1 − weight) · pref + weight · weighted_history``, and quantized into the
    tokens of the prompt. ``weight`` 0 keeps the user's own tokens.
    """

    temperature: float = 0.1
    weight: float = 0.5

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"reference.temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"reference.weight must be in [0, 1], got {self.weight}")


@dataclass
class TasksConfig:
    search: SearchConfig = field(default_factory=SearchConfig)
    rating: RatingConfig = field(default_factory=RatingConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)

    def validate(self) -> None:
        self.search.validate()
        self.rating.validate()
        self.explain.validate()
        self.reference.validate()
