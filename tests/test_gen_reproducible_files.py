"""Adapter files depend on their content only (``prefgen.reproducible_files``): safetensors
metadata and peft's module lists are written in one order whatever process writes them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from prefgen.reproducible_files import sort_peft_config_lists, sort_safetensors_metadata

SAVE_IN_A_FRESH_PROCESS = """
import json, sys, torch
from safetensors.torch import save_file
tensors = {"b.weight": torch.arange(6.0).view(2, 3), "a.bias": torch.ones(5, dtype=torch.float16)}
metadata = {key: f"value of {key}" for key in ("format", "encoder", "tokens", "zeta", "alpha", "ünïcode")}
save_file(tensors, sys.argv[1], metadata=metadata)
"""


def _save_in_processes(folder: Path, seeds: range) -> list[Path]:
    paths = []
    for seed in seeds:
        path = folder / f"{seed}.safetensors"
        env = {**os.environ, "PYTHONHASHSEED": str(seed)}
        subprocess.run([sys.executable, "-c", SAVE_IN_A_FRESH_PROCESS, str(path)], check=True, env=env, timeout=120)
        paths.append(path)
    return paths


def test_safetensors_files_of_equal_content_get_equal_bytes(tmp_path: Path) -> None:
    paths = _save_in_processes(tmp_path, range(5))
    # safetensors' own order differs between processes (a randomly seeded Rust HashMap) ...
    assert len({p.read_bytes() for p in paths}) > 1
    for path in paths:
        sort_safetensors_metadata(path)
    # ... and is one order after sorting, with the same tensors and metadata as written.
    assert len({p.read_bytes() for p in paths}) == 1
    with safe_open(paths[0], "pt") as handle:
        assert handle.metadata()["ünïcode"] == "value of ünïcode" and len(handle.metadata()) == 6
        assert torch.equal(handle.get_tensor("b.weight"), torch.arange(6.0).view(2, 3))
        assert handle.get_tensor("a.bias").dtype == torch.float16
    header_length = int.from_bytes(paths[0].read_bytes()[:8], "little")
    assert header_length % 8 == 0  # the data stays aligned
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_file_without_metadata_keeps_its_tensors_and_a_bad_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"x": torch.eye(3)}, str(path))
    sort_safetensors_metadata(path)
    with safe_open(path, "pt") as handle:
        assert torch.equal(handle.get_tensor("x"), torch.eye(3)) and not handle.metadata()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(ValueError, match=r"bad\.safetensors is not a safetensors file: its header claims"):
        sort_safetensors_metadata(bad)
    assert bad.read_bytes() == b"\xff" * 8 + b"{}"  # left as it was


def test_peft_module_lists_are_sorted_in_peft_layout(tmp_path: Path) -> None:
    path = tmp_path / "adapter_config.json"
    config = {"r": 8, "target_modules": ["q_proj", "o_proj", "k_proj"], "modules_to_save": None, "peft_type": "LORA"}
    path.write_text(json.dumps(config, indent=2, sort_keys=True))
    sort_peft_config_lists(path)
    assert path.read_text() == json.dumps({**config, "target_modules": ["k_proj", "o_proj", "q_proj"]}, indent=2, sort_keys=True)
