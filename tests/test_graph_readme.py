"""The examples in packages/prefgraph/README.md run as written (the second block continues the first)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "packages" / "prefgraph" / "README.md"


def test_readme_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 2
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only spin on a shared CPU
    try:
        namespace: dict = {}
        exec(compile("\n".join(blocks), str(README), "exec"), namespace)
    finally:
        torch.set_num_threads(previous)
    assert namespace["prefs"]["visual"].shape == (50, 32)
    assert int(namespace["prefs"].cold_start.sum()) == 5
    assert abs(float(namespace["weights"].sum()) - 1.0) < 1e-5
    assert set(namespace["metrics"]) >= {"recall@10", "ndcg@20", "num_users"}
