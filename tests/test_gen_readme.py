"""Every python example in packages/prefgen/README.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "packages" / "prefgen" / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_readme_has_an_example() -> None:
    assert EXAMPLES and "TextPreferenceAdapter" in EXAMPLES[0] and "ImagePreferenceAdapter" in EXAMPLES[0]


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_readme_example_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the example saves folders into the working directory
    torch.manual_seed(0)
    exec(compile(EXAMPLES[index], f"README.md example {index}", "exec"), {"__name__": "readme_example"})
