"""prefgen's public surface: explicit names, no model library loaded on import, the stand-ins apart."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import prefgen


def test_import_loads_torch_alone_and_exports_the_api(fresh_import: Callable[[str, Sequence[str]], None]) -> None:
    assert prefgen.__version__ == "0.1.0"
    fresh_import("prefgen", ["transformers", "diffusers", "peft", "tokenizers", "pmg", "prefquant", "prefreward"])


def test_tiny_models_and_offline_tokenizers_are_not_at_the_top_level() -> None:
    stand_ins = ["TinySDXLConfig", "build_tiny_causal_lm", "build_tiny_sdxl_pipeline", "train_clip_tokenizer", "load_tokenizer"]
    assert not [name for name in stand_ins if hasattr(prefgen, name) or name in prefgen.__all__]
