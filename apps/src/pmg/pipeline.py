"""``pmg pipeline``: every stage in order on one run directory, each reused when unchanged."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from pmg.data.dataset_stage import DatasetConfig, prepare_dataset
from pmg.runs import RunDirectory

__all__ = ["PipelineConfig", "STAGES", "quick_profile", "run_pipeline"]

# In order. Each later issue adds its stage here; `--force NAME` redoes one and what follows.
STAGES = ("data",)


@dataclass
class PipelineConfig:
    """The whole method's configuration; each stage's section is that stage's own config."""

    run_dir: str = "runs/default"
    data: DatasetConfig = field(default_factory=DatasetConfig)

    def validate(self) -> None:
        self.data.validate()


def quick_profile() -> Path:
    """The packaged YAML of the ``--quick`` smoke profile (smaller data, fewer steps)."""
    return Path(str(resources.files("pmg.profiles").joinpath("quick.yaml")))


def run_pipeline(config: PipelineConfig, *, force: tuple[str, ...] = (), log=print) -> RunDirectory:
    """Run every stage on ``config.run_dir``; a stage whose inputs are unchanged is reused.

    ``force`` names stages to redo ("all" for every one); a forced stage also invalidates
    the stages after it, since their inputs change.
    """
    unknown = [s for s in force if s not in STAGES and s != "all"]
    if unknown:
        raise ValueError(f"--force names unknown stage(s) {unknown}; stages are {STAGES}")
    first_forced = 0 if "all" in force else min((STAGES.index(s) for s in force), default=len(STAGES))
    run = RunDirectory(config.run_dir)
    started = time.perf_counter()

    t = time.perf_counter()
    data, split, _ = prepare_dataset(config.data, run, force=first_forced <= STAGES.index("data"))
    log(
        f"[data] {data.num_users} users, {data.num_items} items, {data.num_interactions} interactions; "
        f"split {split.scheme}: train {len(split.train)}, val {len(split.val)}, test {len(split.test)} "
        f"({time.perf_counter() - t:.1f}s)"
    )
    log(f"pipeline finished in {time.perf_counter() - started:.1f}s; run directory: {run.root.resolve()}")
    return run
