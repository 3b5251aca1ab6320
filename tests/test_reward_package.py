"""prefreward's public surface: light import, exported names, README examples run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "packages" / "prefreward" / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_import_is_light_and_exports_the_api() -> None:
    code = (
        "import sys, prefreward\n"
        "assert prefreward.__version__ == '0.1.0'\n"
        "missing = [n for n in prefreward.__all__ if not hasattr(prefreward, n)]\n"
        "assert not missing, missing\n"
        "assert 'transformers' not in sys.modules, 'import prefreward must not load transformers'\n"
        "bad = [m for m in ('pmg', 'prefgen', 'prefquant', 'diffusers', 'peft', 'lightning') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr


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
