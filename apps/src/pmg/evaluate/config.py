"""Configuration of the evaluate stage (sizes of each part of the evaluation table)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pmg.preference.baselines import LightGCNConfig

__all__ = ["EvaluateConfig", "GenerationEvaluationConfig", "RecommendationEvaluationConfig"]


@dataclass
class RecommendationEvaluationConfig:
    """Popularity, PyG LightGCN and the preference stage's model ranked on the same test users.

    ``k``: the cut-off of Recall@k and NDCG@k. ``lightgcn``: PyG LightGCN's own settings
    (``pmg.preference.baselines.LightGCNConfig``: 3 layers, the stage's embedding size, its own
    budget to early stopping on validation and a learning-rate grid chosen on validation only).
    The default here is a one-L2 grid (``l2_weights: [1e-4]``, the stage's) so that ``pmg
    evaluate`` stays within the pipeline's time budget; ``benchmarks/preference.py`` searches the
    full lr x L2 grid. ``max_users``: rank at most this many test users (a seeded sample, 0 =
    every user with a test interaction).
    """

    k: int = 20
    lightgcn: LightGCNConfig = field(default_factory=lambda: LightGCNConfig(l2_weights=[1e-4]))
    max_users: int = 0

    def validate(self) -> None:
        if self.k < 1:
            raise ValueError(f"evaluate.recommendation.k must be >= 1, got {self.k}")
        self.lightgcn.validate("evaluate.recommendation.lightgcn")
        if self.max_users < 0:
            raise ValueError("evaluate.recommendation.max_users must be >= 0 (0: every test user)")


@dataclass
class GenerationEvaluationConfig:
    """The generation variants judged on the same ``num_users`` users.

    The users are the data stage's evaluation users (``data.users``: never trained on, nor
    selected on, by any stage), at most ``num_users`` of them (0: all).
    ``consistency_attribute``: the visual attribute whose value the text must name for the image
    and text to count as consistent (the judge reads it off the image). ``joint_text_attribute``:
    the textual taste the text must name for the joint rate (with the image showing the user's
    ``consistency_attribute`` value and the two agreeing).
    ``history_latent_baseline``: also judge the words-and-images baseline ``history_latent``
    (:mod:`pmg.evaluate.generation`); off by default, since choosing its scale generates the
    selection users' images several times (``benchmarks/generation.py`` always judges it).
    """

    num_users: int = 50
    consistency_attribute: str = "colour"
    joint_text_attribute: str = "material"
    history_latent_baseline: bool = False

    def validate(self) -> None:
        if self.num_users < 0 or self.num_users == 1:
            raise ValueError("evaluate.generation.num_users must be 0 (every evaluation user) or >= 2 (the user-preference "
                             f"score compares users), got {self.num_users}")
        if not self.consistency_attribute:
            raise ValueError("evaluate.generation.consistency_attribute must name an attribute (e.g. colour)")
        if not self.joint_text_attribute:
            raise ValueError("evaluate.generation.joint_text_attribute must name a textual attribute (e.g. material)")


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
