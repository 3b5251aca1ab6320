"""Every python example in packages/prefquant/README.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "packages" / "prefquant" / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_readme_has_examples():
    assert len(EXAMPLES) >= 2
    assert "encode_unique" in EXAMPLES[0]


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples save checkpoints into the working directory
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(EXAMPLES[index], f"README.md example {index}", "exec"), {"__name__": "readme_example"})
    finally:
        torch.set_num_threads(previous)
