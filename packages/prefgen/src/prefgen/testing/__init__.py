"""Stand-ins for real checkpoints, for examples, tests and self-contained runs.

Not part of prefgen's top-level API: the adapters take any Hugging Face causal LM and any
diffusers Stable Diffusion pipeline, real or not. These build small ones offline:

- :mod:`prefgen.testing.tiny`: tiny models of the real architectures (``CLIPModel``,
  ``StableDiffusionXLPipeline``, ``Qwen2ForCausalLM``) from plain config dataclasses;
  importing it loads no model library.
- :mod:`prefgen.testing.offline_tokenizers`: ``CLIPTokenizer`` / ``Qwen2Tokenizer`` trained
  on given texts (deterministically), and ``load_tokenizer`` for a trained or real one.

The pmg zoo builds its models with them. Import from the module that holds a name
(``from prefgen.testing.tiny import build_tiny_causal_lm``): this package imports neither,
so that a config that nests a tiny model's dataclass does not load transformers.
"""
