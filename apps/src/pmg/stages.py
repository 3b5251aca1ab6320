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

__all__ = ["Stage", "StageResult", "reuse_or_clear", "complete_stage", "write_stage_record"]


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


def reuse_or_clear(run: RunDirectory, stage: str, stage_fp: str, force: bool, *, resumable: bool = False) -> StageResult | None:
    """The start of every stage: its recorded result when ``run`` holds a complete, undamaged
    output of these inputs (``stage_fp``) and ``force`` is off; otherwise None, after clearing the
    stage's earlier outputs. A ``resumable`` stage keeps its checkpoints unless forced, so a fit
    of the same inputs killed before it completed resumes from them."""
    if not force and run.is_current(stage, stage_fp):
        return StageResult(stage_fp, run.require(stage)["summary"], reused=True)
    run.invalidate(stage, keep_checkpoints=resumable and not force)
    return None


def complete_stage(run: RunDirectory, stage: str, stage_fp: str, summary: str, **record: Any) -> StageResult:
    """The end of every stage: record it complete for ``stage_fp`` with its ``summary`` line and
    ``record`` (e.g. ``metrics``) in ``run.json``, after its outputs are written."""
    run.mark_complete(stage, stage_fp, {"summary": summary, **record})
    return StageResult(stage_fp, summary)


def write_stage_record(folder: Path, metrics: dict[str, float], config: Any) -> None:
    """``metrics.json`` and the stage's ``config.yaml`` in ``folder``, each written atomically
    (``pmg generate`` and the benchmarks read a stage's settings back from that YAML)."""
    with atomic_file(folder / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2))
    with atomic_file(folder / "config.yaml") as tmp:
        tmp.write_text(config_to_yaml(config))
