"""prefgen."""

__version__ = "0.1.0"

# Resolved on first use so that ``import prefgen`` does not load transformers / diffusers.
_LAZY = {
    # Preference-token adapters, soft prompts and prompt builders.
    "TextPreferenceAdapter": "prefgen.text_adapter",
    "LoraOptions": "prefgen.text_adapter",
    "DEFAULT_LM_LORA_TARGETS": "prefgen.text_adapter",
    "ImagePreferenceAdapter": "prefgen.image_adapter",
    "UNetLoraOptions": "prefgen.image_adapter",
    "PromptEmbeddings": "prefgen.image_adapter",
    "load_preference_embeddings": "prefgen.image_adapter",
    "DEFAULT_UNET_LORA_TARGETS": "prefgen.image_adapter",
    "TokenInit": "prefgen.token_rows",
    "PreferenceTokenError": "prefgen.token_rows",
    "AdapterFileError": "prefgen.token_rows",
    "add_new_tokens": "prefgen.token_rows",
    "initial_token_rows": "prefgen.token_rows",
    "SoftPromptInjector": "prefgen.soft_prompt",
    "SoftPromptProjector": "prefgen.soft_prompt",
    "soft_prompt_tokens": "prefgen.soft_prompt",
    "PromptTemplates": "prefgen.prompts",
    "build_image_prompt": "prefgen.prompts",
    "build_text_prompt": "prefgen.prompts",
    "describe_subject": "prefgen.prompts",
    "token_fragment": "prefgen.prompts",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prefgen' has no attribute {name!r}")
