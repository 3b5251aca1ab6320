"""Stage "generator": the users' preference tokens taught to the zoo's causal LM (SFT) and SDXL pipeline (diffusion loss)."""

from pmg.generator.config import (
           BaselinesConfig,
           GeneratorConfig,
           ImageGeneratorConfig,
           SampleConfig,
           TextGeneratorConfig,
)
from pmg.generator.stage import (
           GENERATOR_STAGE,
           SoftPromptGenerators,
           UserGeneration,
           generate_for_user,
           load_generators,
           load_soft_prompt_generators,
           run_generator_stage,
)

__all__ = ["GENERATOR_STAGE", "BaselinesConfig", "GeneratorConfig", "ImageGeneratorConfig", "SampleConfig",
           "SoftPromptGenerators", "TextGeneratorConfig", "UserGeneration", "generate_for_user", "load_generators",
           "load_soft_prompt_generators", "run_generator_stage"]
