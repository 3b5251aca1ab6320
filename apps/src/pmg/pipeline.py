"""``pmg pipeline``: every stage in order on one run directory, each reused when unchanged."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from pmg.data.dataset_stage import DATA_STAGE, DatasetConfig
from pmg.evaluate import EVALUATE_STAGE, EvaluateConfig
from pmg.generator import GENERATOR_STAGE, GeneratorConfig
from pmg.preference.stage import PREFERENCE_STAGE, PreferenceConfig
from pmg.quantize.stage import QUANTIZE_STAGE, QuantizeConfig
from pmg.report import REPORT_STAGE, ReportConfig, report_path
from pmg.reward import REWARD_STAGE, RewardConfig
from pmg.runs import RunDirectory
from pmg.stages import Stage
from pmg.zoo import ZOO_STAGE, ZooConfig

__all__ = ["PipelineConfig", "STAGES", "quick_profile", "run_pipeline"]

# In order; each stage's config is the PipelineConfig field of the same name.
# `--force NAME` redoes that stage, and the stages after it see a changed upstream.
STAGES: tuple[Stage, ...] = (DATA_STAGE, ZOO_STAGE, PREFERENCE_STAGE, QUANTIZE_STAGE, GENERATOR_STAGE, REWARD_STAGE,
                             EVALUATE_STAGE, REPORT_STAGE)


@dataclass
class PipelineConfig:
    """The whole method's configuration; each stage's section is that stage's own config."""

    run_dir: str = "runs/default"
    data: DatasetConfig = field(default_factory=DatasetConfig)
    zoo: ZooConfig = field(default_factory=ZooConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def validate(self) -> None:
        self.data.validate()
        self.zoo.validate()
        self.preference.validate()
        self.quantize.validate()
        self.generator.validate()
        self.reward.validate()
        self.evaluate.validate()
        self.report.validate()


def quick_profile(config: str | Path | None = None) -> list[Path]:
    """The config files of the ``--quick`` smoke profile, for ``load_config`` to merge in order:
    without ``config``, its step counts (``quick_steps.yaml``: tens of steps per model, a handful
    of evaluated users) on its small catalog (``quick.yaml``); with one, that file's data and run
    under the same step counts, so any dataset can be smoke-checked in minutes."""
    profiles = resources.files("pmg.profiles")
    steps = Path(str(profiles.joinpath("quick_steps.yaml")))
    return [Path(config), steps] if config is not None else [steps, Path(str(profiles.joinpath("quick.yaml")))]


def run_pipeline(config: PipelineConfig, *, force: tuple[str, ...] = (), until: str | None = None, log=print,
                 command: str = "pmg pipeline") -> RunDirectory:
    """Run every stage on ``config.run_dir`` (up to and including ``until`` if given); a stage
    whose inputs are unchanged is reused.

    ``force`` names stages to redo ("all" for every one); a forced stage also invalidates
    the stages after it, since their inputs change. The run's lock is held throughout
    (``command`` is what it names to a second writer).
    """
    names = [stage.name for stage in STAGES]
    unknown = [s for s in force if s not in names and s != "all"]
    if unknown:
        raise ValueError(f"--force names unknown stage(s) {unknown}; stages are {names}")
    if until is not None and until not in names:
        raise ValueError(f"--until names unknown stage {until!r}; stages are {names}")
    stages = STAGES[: names.index(until) + 1] if until is not None else STAGES
    first_forced = 0 if "all" in force else min((names.index(s) for s in force), default=len(names))
    run = RunDirectory(config.run_dir)
    started = time.perf_counter()
    upstream = ""
    with run.lock(command):
        for position, stage in enumerate(stages):
            log(f"[{stage.name}] stage {position + 1} of {len(stages)}")
            t = time.perf_counter()
            result = stage.run(getattr(config, stage.config_field), run, upstream, position >= first_forced)
            note = "reused" if result.reused else f"{time.perf_counter() - t:.1f}s"
            log(f"[{stage.name}] {result.summary} ({note})")
            upstream = result.fingerprint
    log(f"pipeline finished in {time.perf_counter() - started:.1f}s; run directory: {run.root.resolve()}")
    report = report_path(run)
    if report is not None:
        log(f"report: {report.resolve()}")
    return run
