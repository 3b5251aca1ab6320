"""benchmarks/generation.py --check: every target of TARGETS compared with the printed JSON."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "generation.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("pmg_bench_generation", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _result(default: dict, sparse: dict, overhead: float) -> dict:
    return {"profiles": {"default": default, "sparse": sparse}, "token_overhead": overhead}


def _meeting(bench) -> dict:
    variant = {"image_colour": 0.95, "image_pattern": 0.85, "text_material": 0.93, "text_style": 0.9, "joint": 0.8}
    default = {"variants": {bench.DEFAULT_VARIANT: variant},
               "default_vs_keywords": {"image_personalization_ci": [-0.02, 0.05], "text_personalization_ci": [0.01, 0.08]}}
    sparse = {"default_vs_keywords": {"image_personalization": 0.12, "text_personalization": 0.2}}
    return _result(default, sparse, 0.02)


def test_every_target_met_is_no_miss_and_each_miss_is_named(bench) -> None:
    result = _meeting(bench)
    assert bench.check_targets(result) == []
    result["profiles"]["default"]["variants"][bench.DEFAULT_VARIANT]["text_style"] = 0.5
    result["profiles"]["default"]["default_vs_keywords"]["text_personalization_ci"] = [-0.3, -0.1]
    result["token_overhead"] = 0.2
    misses = bench.check_targets(result)
    assert len(misses) == 3
    assert any("text_style >= 0.8: got 0.5" in m for m in misses)
    assert any("text_personalization_ci.1 >= 0.0: got -0.1" in m for m in misses)
    assert any(m.startswith("token_overhead <= 0.05") for m in misses)


def test_a_profile_not_run_leaves_its_targets_unmet(bench) -> None:
    result = _meeting(bench)
    del result["profiles"]["sparse"]
    misses = bench.check_targets(result)
    assert misses and all("not measured" in m and m.startswith("sparse: ") for m in misses)


def test_check_file_exits_nonzero_on_a_miss(bench, tmp_path: Path) -> None:
    saved = tmp_path / "out.log"
    saved.write_text("progress line\n" + json.dumps(_meeting(bench)) + "\n")
    run = subprocess.run([sys.executable, str(BENCH), "--check-file", str(saved)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    missed = _meeting(bench)
    missed["profiles"]["sparse"]["default_vs_keywords"]["image_personalization"] = -0.05
    saved.write_text(json.dumps(missed) + "\n")
    run = subprocess.run([sys.executable, str(BENCH), "--check-file", str(saved)], capture_output=True, text=True)
    assert run.returncode == 1 and "sparse: default_vs_keywords.image_personalization >= 0.1: got -0.05" in run.stdout
