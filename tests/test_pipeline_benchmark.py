"""benchmarks/pipeline.py's yardstick: the fixed workload of benchmarks/reference_workload.py,
timed in a process of its own before and after the runs it measures."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest


def test_reference_workload_times_its_steps(benchmark_module: Callable[[str], ModuleType]) -> None:
    workload = benchmark_module("reference_workload")
    assert workload.reference_seconds(2) > 0
    with pytest.raises(ValueError, match="steps must be at least 1, got 0"):
        workload.reference_seconds(0)


def test_pipeline_benchmark_reads_the_workload_from_its_own_process(
        benchmark_module: Callable[[str], ModuleType], capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = benchmark_module("pipeline")
    seconds, steps = pipeline.reference_seconds(2)
    assert seconds > 0 and steps == 2
    assert f"[reference] 2 steps in {seconds:.2f}s" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="the reference workload exited with 1"):
        pipeline.reference_seconds(0)
    assert "steps must be at least 1" in capsys.readouterr().err
