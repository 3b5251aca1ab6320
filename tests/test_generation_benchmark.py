"""benchmarks/generation.py --check: its TARGETS against the JSON it prints (the check itself:
tests/test_benchmark_targets.py)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest

from pmg.benchmark_targets import check_targets


@pytest.fixture(scope="module")
def bench(benchmark_module: Callable[[str], ModuleType]) -> ModuleType:
    return benchmark_module("generation")


def _meeting(bench: ModuleType) -> dict:
    """A result shaped as the benchmark prints it that meets every target."""
    variant = {"image_colour": 0.95, "image_pattern": 0.85, "text_material": 0.93, "text_style": 0.9, "joint": 0.8}
    default = {"variants": {bench.DEFAULT_VARIANT: variant},
               "default_vs_keywords": {"image_personalization_ci": [-0.02, 0.05], "text_personalization_ci": [0.01, 0.08]}}
    sparse = {"default_vs_keywords": {"image_personalization": 0.12, "text_personalization": 0.2}}
    return {"profiles": {"default": default, "sparse": sparse}, "token_overhead": 0.02}


def test_every_target_met_is_no_miss_and_each_miss_is_named(bench: ModuleType) -> None:
    result = _meeting(bench)
    assert check_targets(result, bench.TARGETS) == []
    result["profiles"]["default"]["variants"][bench.DEFAULT_VARIANT]["text_style"] = 0.5
    result["profiles"]["default"]["default_vs_keywords"]["text_personalization_ci"] = [-0.3, -0.1]
    result["token_overhead"] = 0.2
    assert check_targets(result, bench.TARGETS) == [
        f"profiles.default.variants.{bench.DEFAULT_VARIANT}.text_style >= 0.8: got 0.5",
        "profiles.default.default_vs_keywords.text_personalization_ci.1 >= 0: got -0.1",
        "token_overhead <= 0.05: got 0.2",
    ]


def test_a_profile_not_run_leaves_its_targets_unmet(bench: ModuleType) -> None:
    result = _meeting(bench)
    del result["profiles"]["sparse"]
    misses = check_targets(result, bench.TARGETS)
    assert len(misses) == 2 and all(m.startswith("profiles.sparse.") and m.endswith(": not measured") for m in misses)
