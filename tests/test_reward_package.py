"""prefreward's public surface: light import, exported names, README examples run as written."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

import prefreward

README = Path(__file__).resolve().parents[1] / "packages" / "prefreward" / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_import_is_light_and_exports_the_api(fresh_import: Callable[[str, Sequence[str]], None]) -> None:
    assert prefreward.__version__ == "0.1.0"
    fresh_import("prefreward", ["transformers", "pmg", "prefgen", "prefquant", "diffusers", "peft", "lightning"])


def test_readme_has_runnable_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_readme_example_runs(index: int) -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(EXAMPLES[index], f"README.md example {index}", "exec"), {"__name__": "readme_example"})
    finally:
        torch.set_num_threads(previous)
