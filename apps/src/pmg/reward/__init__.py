"""Stage "reward": the generator stage's adapters fine-tuned with consistency + personalization rewards."""

from pmg.reward.config import ImageRewardConfig, RewardConfig, RewardWeights, TextRewardConfig
from pmg.reward.stage import REWARD_STAGE, load_reward_generators, run_reward_stage

__all__ = ["REWARD_STAGE", "ImageRewardConfig", "RewardConfig", "RewardWeights", "TextRewardConfig",
           "load_reward_generators", "run_reward_stage"]
