"""The stage interface shared by ``pmg pipeline`` and ``pmg <stage> fit``.

A stage is a function ``run(config, run_dir, upstream, force) -> StageResult``: it computes
its fingerprint from its own config and the fingerprint of the stage before it, reuses its
artifacts in ``run_dir`` when that fingerprint is current (unless ``force``), and otherwise
recomputes them. So a change to one stage's config redoes that stage and those after it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pmg.runs import RunDirectory

__all__ = ["Stage", "StageResult"]


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
