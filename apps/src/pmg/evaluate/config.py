"""Configuration of the evaluate stage (sizes of each part of the evaluation table)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["EvaluateConfig", "GenerationEvaluationConfig", "RecommendationEvaluationConfig", "USER_POOLS"]

# Where the generation users come from (see GenerationEvaluationConfig).
USER_POOLS = ("reward_validation", "generator_heldout", "all")


@dataclass
class RecommendationEvaluationConfig:
    """Popularity, PyG LightGCN and the preference stage's model ranked on the same test users.

    ``k``: the cut-off of Recall@k and NDCG@k. ``lightgcn_epochs``: LightGCN's epoch budget;
    -1 gives it the preference stage's own (``preference.trainer.max_epochs``, with the same
    early stopping), so both recommenders get the same budget. ``max_users``: rank at most this
    many test users (a seeded sample, 0 = every user with a test interaction).
    """

    k: int = 20
    lightgcn_epochs: int = -1
    max_users: int = 0

    def validate(self) -> None:
        if self.k < 1:
            raise ValueError(f"evaluate.recommendation.k must be >= 1, got {self.k}")
        if self.lightgcn_epochs < -1 or self.lightgcn_epochs == 0:
            raise ValueError("evaluate.recommendation.lightgcn_epochs must be >= 1, or -1 for the preference stage's budget")
        if self.max_users < 0:
            raise ValueError("evaluate.recommendation.max_users must be >= 0 (0: every test user)")


@dataclass
class GenerationEvaluationConfig:
    """The four generation variants judged on the same ``num_users`` users.

    ``user_pool``: ``reward_validation`` (the reward stage's held-out users, so the SFT → reward
    comparison is on users the reward never trained on; the generator's held-out users among them
    first), ``generator_heldout`` (users the generators never saw) or ``all``.
    ``consistency_attribute``: the visual attribute whose value the text must name for the image
    and text to count as consistent (the judge reads it off the image).
    """

    num_users: int = 50
    user_pool: str = "reward_validation"
    consistency_attribute: str = "colour"

    def validate(self) -> None:
        if self.num_users < 2:
            raise ValueError(f"evaluate.generation.num_users must be >= 2 (the user-preference score compares users), got {self.num_users}")
        if self.user_pool not in USER_POOLS:
            raise ValueError(f"evaluate.generation.user_pool {self.user_pool!r} must be one of {list(USER_POOLS)}")
        if not self.consistency_attribute:
            raise ValueError("evaluate.generation.consistency_attribute must name an attribute (e.g. colour)")


@dataclass
class EvaluateConfig:
    """Stage "evaluate": one table of recommendation, quantizer and generation metrics for a run.

    ``seed`` seeds the user samples and the random-code NMI reference.
    """

    recommendation: RecommendationEvaluationConfig = field(default_factory=RecommendationEvaluationConfig)
    generation: GenerationEvaluationConfig = field(default_factory=GenerationEvaluationConfig)
    seed: int = 0

    def validate(self) -> None:
        self.recommendation.validate()
        self.generation.validate()
