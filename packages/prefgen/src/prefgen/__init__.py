"""prefgen."""

__version__ = "0.1.0"

# Tiny models of the real architectures and offline tokenizers. Resolved on first use so
# that ``import prefgen`` does not load transformers / diffusers.
_LAZY = {
    "TinyClipConfig": "prefgen.tiny",
    "TinySDXLConfig": "prefgen.tiny",
    "TinyCausalLMConfig": "prefgen.tiny",
    "build_tiny_clip": "prefgen.tiny",
    "build_tiny_sdxl_pipeline": "prefgen.tiny",
    "build_tiny_causal_lm": "prefgen.tiny",
    "text_encoders_from_clip": "prefgen.tiny",
    "train_clip_tokenizer": "prefgen.offline_tokenizers",
    "train_causal_lm_tokenizer": "prefgen.offline_tokenizers",
    "load_tokenizer": "prefgen.offline_tokenizers",
    "TokenizerError": "prefgen.offline_tokenizers",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prefgen' has no attribute {name!r}")
