"""Stage "generator": the users' preference tokens taught to the zoo's causal LM (SFT) and SDXL pipeline (diffusion loss)."""

from pmg.generator.config import GeneratorConfig, ImageGeneratorConfig, SampleConfig, TextGeneratorConfig
from pmg.generator.stage import (
           GENERATOR_STAGE,
           UserGeneration,
           generate_for_user,
           load_generators,
           run_generator_stage,
)

__all__ = ["GENERATOR_STAGE", "GeneratorConfig", "ImageGeneratorConfig", "SampleConfig", "TextGeneratorConfig",
           "UserGeneration", "generate_for_user", "load_generators", "run_generator_stage"]
