"""Stage "generator": the users' preference tokens taught to the zoo's causal LM (SFT) and SDXL pipeline (diffusion loss).

Training and the stage runner are in ``pmg.generator.stage``; what goes into a user's prompts in
``pmg.generator.prompts``; generation with the trained adapters, and reloading them, in
``pmg.generator.generate``.
"""

from pmg.generator.config import (
           BaselinesConfig,
           GeneratorConfig,
           ImageGeneratorConfig,
           SampleConfig,
           TextGeneratorConfig,
)
from pmg.generator.generate import (
           ImageChoice,
           SoftPromptGenerators,
           UserGeneration,
           generate_for_user,
           generate_for_users,
           load_generators,
           load_soft_prompt_generators,
)
from pmg.generator.stage import GENERATOR_STAGE, run_generator_stage

__all__ = ["GENERATOR_STAGE", "BaselinesConfig", "GeneratorConfig", "ImageChoice", "ImageGeneratorConfig", "SampleConfig",
           "SoftPromptGenerators", "TextGeneratorConfig", "UserGeneration", "generate_for_user", "generate_for_users",
           "load_generators", "load_soft_prompt_generators", "run_generator_stage"]
