"""prefgen: discrete user-preference tokens in Hugging Face causal LMs and diffusers pipelines.

:class:`TextPreferenceAdapter` (new token rows + LoRA in a causal LM) and
:class:`ImagePreferenceAdapter` (textual inversion in every text encoder of an SDXL or SD
pipeline, optional UNet LoRA, optional :class:`LatentPrior` on the initial latents), how their rows start (:class:`TokenInit`), the soft-prompt
baseline and the prompt builders. Stand-ins for real checkpoints (tiny models, offline
tokenizers) live apart, in :mod:`prefgen.testing`.

Importing prefgen imports torch (every adapter is an ``nn.Module``) and safetensors (their files),
not transformers, diffusers or peft: those load when an adapter is built or loaded.
"""

__version__ = "0.1.0"

from prefgen.image_adapter import (
    DEFAULT_UNET_LORA_TARGETS,
    ImagePreferenceAdapter,
    PromptEmbeddings,
    UNetLoraOptions,
    load_preference_embeddings,
)
from prefgen.latent_prior import LatentPrior, fit_latent_prior
from prefgen.prompts import (
    PromptTemplates,
    build_image_prompt,
    build_text_prompt,
    describe_subject,
    token_fragment,
)
from prefgen.soft_prompt import SoftPromptInjector, SoftPromptProjector, soft_prompt_tokens
from prefgen.text_adapter import (
    DEFAULT_LM_LORA_TARGETS,
    LoraOptions,
    PromptOnlyTokenFilter,
    TextPreferenceAdapter,
)
from prefgen.token_rows import (
    AdapterFileError,
    PreferenceTokenError,
    TokenInit,
    add_new_tokens,
    initial_token_rows,
)

__all__ = [
    "DEFAULT_LM_LORA_TARGETS",
    "DEFAULT_UNET_LORA_TARGETS",
    "AdapterFileError",
    "ImagePreferenceAdapter",
    "LatentPrior",
    "LoraOptions",
    "PreferenceTokenError",
    "PromptEmbeddings",
    "PromptOnlyTokenFilter",
    "PromptTemplates",
    "SoftPromptInjector",
    "SoftPromptProjector",
    "TextPreferenceAdapter",
    "TokenInit",
    "UNetLoraOptions",
    "__version__",
    "add_new_tokens",
    "build_image_prompt",
    "build_text_prompt",
    "describe_subject",
    "fit_latent_prior",
    "initial_token_rows",
    "load_preference_embeddings",
    "soft_prompt_tokens",
    "token_fragment",
]
