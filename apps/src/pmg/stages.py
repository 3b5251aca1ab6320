"""The stage interface shared by ``pmg pipeline`` and ``pmg <stage> fit``.

A stage is a function ``run(config, run_dir, upstream, force) -> StageResult``: it computes
its fingerprint from its own config and the fingerprint of the stage before it, reuses its
artifacts in ``run_dir`` when that fingerprint is current (unless ``force``), and otherwise
recomputes them. So a change to one stage's config redoes that stage and those after it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pmg.atomic import atomic_file
from pmg.config import config_to_yaml
from pmg.runs import RunDirectory

__all__ = ["Stage", "StageResult", "write_stage_record"]


@dataclass(frozen=True)
class StageResult:
    fingerprint: str
    summary: str
    reused: bool = False


@dataclass(frozen=True)
class Stage:
    """``name`` is the CLI word and run sub-folder; ``config_field`` the section of
    ``PipelineConfig``; ``config_type`` the dataclass of that section."""

    name: str
    config_field: str
    config_type: type
    run: Callable[[Any, RunDirectory, str, bool], StageResult]
    help: str = ""


def write_stage_record(folder: Path, metrics: dict[str, float], config: Any) -> None:
    """``metrics.json`` and the stage's ``config.yaml`` in ``folder``, each written atomically
    (``pmg generate`` and the benchmarks read a stage's settings back from that YAML)."""
    with atomic_file(folder / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2))
    with atomic_file(folder / "config.yaml") as tmp:
        tmp.write_text(config_to_yaml(config))
