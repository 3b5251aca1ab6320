"""Run directories: one folder per run, one sub-folder per stage, each stage's completion
recorded with a fingerprint of its inputs so unchanged stages are reused, not redone."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from pmg import __version__
from pmg.atomic import atomic_file

__all__ = ["RunError", "RunDirectory", "fingerprint", "stage_fingerprint", "config_inputs", "NON_INPUT_KEYS"]

_RUN_FORMAT = 1
# How a stage runs on its own where that is not `pmg <stage> fit --run DIR` ("": only within `pmg pipeline`).
_STAGE_COMMANDS = {"data": "", "evaluate": "pmg evaluate --run {root}", "report": "pmg report --run {root}"}


class RunError(RuntimeError):
    """A run directory that lacks a stage, comes from an incompatible version, or is damaged."""


def fingerprint(*parts: Any) -> str:
    """A short, stable hash of JSON-serialisable parts (configs, upstream fingerprints)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# Config keys that say where a cache lives, how progress and logs show, how many threads run or
# whether to rebuild anyway: not what a stage computes, so changing them redoes nothing.
NON_INPUT_KEYS = frozenset({"cache_dir", "enable_progress_bar", "log_every_n_steps", "num_threads", "retrain"})


def config_inputs(config: Any) -> Any:
    """A config dict (``pmg.config.config_to_dict``) less ``NON_INPUT_KEYS`` at any depth: what a
    stage's fingerprint and the zoo's cache key hash."""
    if isinstance(config, dict):
        return {k: config_inputs(v) for k, v in config.items() if k not in NON_INPUT_KEYS}
    if isinstance(config, list):
        return [config_inputs(v) for v in config]
    return config


def stage_fingerprint(stage: str, config: Any, upstream: str) -> str:
    """What a stage's completion is recorded with: its name, its config dataclass (less
    ``NON_INPUT_KEYS``) and the fingerprint of the stages before it."""
    from pmg.config import config_to_dict

    return fingerprint(stage, config_inputs(config_to_dict(config)), upstream)


class RunDirectory:
    """A run's folder. ``stage_dir(name)`` holds a stage's artifacts; ``<stage>/stage.json``
    marks the stage complete with the fingerprint of the inputs it was computed from."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        meta = self.root / "run.json"
        if meta.is_file():
            try:
                info = json.loads(meta.read_text())
            except json.JSONDecodeError as err:
                raise RunError(f"{meta} is damaged ({err.msg}); delete the run directory or use another --run") from err
            if info.get("format") != _RUN_FORMAT:
                raise RunError(
                    f"{self.root} was written by pmg {info.get('pmg_version', '?')} in run format "
                    f"{info.get('format')!r}; this pmg ({__version__}) reads format {_RUN_FORMAT}. "
                    "Start a new run directory (--run) or rerun with --force all."
                )
        else:
            with atomic_file(meta) as tmp:
                tmp.write_text(json.dumps({"format": _RUN_FORMAT, "pmg_version": __version__}, indent=2))

    def stage_dir(self, stage: str) -> Path:
        path = self.root / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def record(self, stage: str) -> dict[str, Any] | None:
        """The completion record of ``stage``, or None if it has not completed."""
        path = self.root / stage / "stage.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None

    def is_current(self, stage: str, stage_fingerprint: str) -> bool:
        record = self.record(stage)
        return record is not None and record.get("fingerprint") == stage_fingerprint

    def mark_complete(self, stage: str, stage_fingerprint: str, summary: dict[str, Any]) -> None:
        with atomic_file(self.stage_dir(stage) / "stage.json") as tmp:
            tmp.write_text(json.dumps({"fingerprint": stage_fingerprint, "pmg_version": __version__, **summary}, indent=2, default=str))

    def invalidate(self, stage: str) -> None:
        """Mark ``stage`` incomplete before recomputing it, and drop its training checkpoints:
        they belong to the inputs it had before and must not be resumed or mixed in."""
        (self.root / stage / "stage.json").unlink(missing_ok=True)
        shutil.rmtree(self.root / stage / "checkpoints", ignore_errors=True)

    def require(self, stage: str) -> dict[str, Any]:
        """The completion record of ``stage``; ``RunError`` that says what to run if it is missing."""
        record = self.record(stage)
        if record is None:
            alone = _STAGE_COMMANDS.get(stage, f"pmg {stage} fit --run {{root}}")
            alternative = f" (or `{alone.format(root=self.root)}`)" if alone else ""
            raise RunError(f"stage {stage!r} has not completed in {self.root}; run `pmg pipeline --run {self.root}`{alternative} first")
        return record
