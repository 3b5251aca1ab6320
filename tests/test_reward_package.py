"""prefreward's public surface: light import, exported names, README examples run as written."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

import prefreward
from prefgen.testing.offline_tokenizers import train_clip_tokenizer
from prefgen.testing.tiny import TinyClipConfig, build_tiny_clip

README = Path(__file__).resolve().parents[1] / "packages" / "prefreward" / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_import_is_light_and_exports_the_api(fresh_import: Callable[[str, Sequence[str]], None]) -> None:
    assert prefreward.__version__ == "0.1.0"
    fresh_import("prefreward", ["transformers", "pmg", "prefgen", "prefquant", "diffusers", "peft", "lightning"])


def test_readme_has_runnable_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP saved as a user's CLIP folder is (model and tokenizer)."""
    torch.manual_seed(0)
    tokenizer = train_clip_tokenizer(["a red striped dress", "a blue shirt", "a green bag", "a black coat"],
                                     vocab_size=540, model_max_length=16)
    clip = build_tiny_clip(TinyClipConfig(max_text_length=16), tokenizer)
    folder = tmp_path_factory.mktemp("clip")
    clip.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_readme_example_runs(index: int, clip_folder: Path) -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(EXAMPLES[index], f"README.md example {index}", "exec"),
             {"__name__": "readme_example", "clip_folder": clip_folder})
    finally:
        torch.set_num_threads(previous)
