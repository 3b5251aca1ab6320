"""Stage "reward": the generator stage's adapters fine-tuned with consistency + personalization rewards."""

from pmg.reward.choice import PersonalizationScorer, image_choice
from pmg.reward.config import ImageRewardConfig, RewardConfig, RewardWeights, TextRewardConfig
from pmg.reward.stage import REWARD_STAGE, fit_content_maps, load_reward_generators, run_reward_stage

__all__ = ["REWARD_STAGE", "ImageRewardConfig", "PersonalizationScorer", "RewardConfig", "RewardWeights", "TextRewardConfig",
           "fit_content_maps", "image_choice", "load_reward_generators", "run_reward_stage"]
