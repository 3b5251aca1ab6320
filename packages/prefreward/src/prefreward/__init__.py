"""prefreward: rewards and policy-gradient pieces for personalized multimodal generation.

- ``ConsistencyReward``: CLIP agreement between a generated image and a generated text.
- ``PersonalizationReward``: agreement of generated content with a user's modal preference
  vector; ``RankingPersonalizationReward``: probability a ranking model picks it first.
- ``CombinedReward``: a weighted sum of named components, with per-component values for logging.
- ``group_relative_advantages`` / ``grpo_loss`` for text; ``reward_backprop_loss``,
  ``truncated_backprop_loop``, ``ddim_step_mean_std``, ``step_log_prob``, ``ddpo_loss`` for images.

Only torch is imported here; transformers is imported when a CLIP is loaded.
"""

from prefreward._clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipEmbedder, projected_embedding
from prefreward.policy_gradient import (
    ddim_step_mean_std,
    ddpo_loss,
    group_relative_advantages,
    grpo_loss,
    reward_backprop_loss,
    step_log_prob,
    truncated_backprop_loop,
)
from prefreward.rewards import (
    CombinedReward,
    ConsistencyReward,
    PersonalizationReward,
    RankingPersonalizationReward,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "ClipEmbedder",
    "projected_embedding",
    "ConsistencyReward",
    "PersonalizationReward",
    "RankingPersonalizationReward",
    "CombinedReward",
    "group_relative_advantages",
    "grpo_loss",
    "reward_backprop_loss",
    "truncated_backprop_loop",
    "ddim_step_mean_std",
    "step_log_prob",
    "ddpo_loss",
]
