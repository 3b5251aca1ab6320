"""The "zoo" stage: tokenizers, CLIP, the attribute judge, the SDXL pipeline and the causal
LM, trained on the run's dataset (or loaded from ``base_model``), cached by content hash.

Cache: ``<cache_dir>/<key>/`` where ``key`` hashes the dataset's files, the split and the
config (less ``pmg.runs.NON_INPUT_KEYS``: cache folders, progress bars, threads), so every run
directory with the same inputs shares one entry. Each entry holds ``save_pretrained`` folders
(``clip``, ``sdxl``, ``lm``), the judge folder, the trained tokenizers, ``zoo.json``,
``t2i_samples.png`` (held-out text-to-image samples with the judge's readings) and
``heldout_samples.png`` (held-out items' prompts, generated and real images); ``zoo.json``
holds the metrics (null where not measured, the reason under ``metrics_missing``; never NaN)
and records the size and SHA-256 of every file, and an entry whose files no longer match is
rebuilt, not trusted. An entry is built in ``<cache_dir>/.<key>.partial/``, renamed into place
once complete; a build that was killed goes on there from its finished models and its last
checkpoint. The run's ``zoo/stage.json`` records the entry; TensorBoard logs land in
``<run>/zoo/<model>/tb``.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from pmg.atomic import atomic_directory
from pmg.config import config_to_dict
from pmg.data.dataset_stage import load_prepared
from pmg.data.format import InteractionData
from pmg.data.split import Split
from pmg.integrity import file_record
from pmg.runs import RunDirectory, RunWarning, config_inputs, fingerprint
from pmg.stages import Stage, StageResult
from pmg.zoo.config import ZooConfig
from pmg.zoo.manifest import HELDOUT_SAMPLES, ZOO_FORMAT, ZOO_VERSION, read_zoo_folder, zoo_damage

__all__ = ["ZOO_STAGE", "zoo_cache_key", "dataset_content_hash", "build_zoo", "run_zoo_stage"]


def dataset_content_hash(folder: Path, extra: tuple[Path, ...] = ()) -> str:
    """SHA-256 over every file under ``folder`` (relative names and bytes) and ``extra`` files."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in [*files, *extra]:
        name = path.relative_to(folder) if path.is_relative_to(folder) else Path(path.name)
        digest.update(str(name).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def zoo_cache_key(config: ZooConfig, data_hash: str) -> str:
    """The cache entry name: a hash of the dataset content and the zoo config."""
    return fingerprint("zoo", ZOO_VERSION, config_inputs(config_to_dict(config)), data_hash)


def build_zoo(config: ZooConfig, data: InteractionData, split: Split, folder: Path, log_dir: Path,
              log=print) -> dict[str, Any]:
    """Train / load every model and write them, with ``zoo.json``, to ``folder`` atomically.

    A build that was killed goes on from the models it had finished and the fit it was in
    (``pmg.zoo.models.ZooProgress``, in the ``.<key>.partial`` folder it builds in), unless
    ``config.retrain``. Returns the manifest. Heavy imports happen here so that loading the
    stage stays cheap.
    """
    # Lazy: pmg.zoo.models imports every recipe, diffusers among them (6 s at CLI start-up).
    from pmg.zoo.models import ZooProgress, train_models

    started = time.perf_counter()
    with atomic_directory(folder, resumable=True) as tmp:
        progress = ZooProgress(tmp, folder.name, log)  # the entry's name is its cache key
        if config.retrain:
            progress.clear()
        manifest = train_models(config, data, split, tmp, log_dir, progress, log=log)
        progress.clear()
        manifest.update(format=ZOO_FORMAT, version=ZOO_VERSION, seconds=round(time.perf_counter() - started, 1),
                        config=config_to_dict(config), files=file_record(tmp, skip=lambda relative: relative.as_posix() == "zoo.json"))
        # allow_nan=False: a NaN would make zoo.json invalid JSON; a figure not measured is null.
        (tmp / "zoo.json").write_text(json.dumps(manifest, indent=2, default=str, allow_nan=False) + "\n")
    return manifest


def run_zoo_stage(config: ZooConfig, run: RunDirectory, upstream: str, force: bool, log=print) -> StageResult:
    """Reuse the run's zoo when current, else the cache entry for these inputs, else build it."""
    config.validate()
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    run.require("data")
    data_dir = run.stage_dir("data")
    data_hash = dataset_content_hash(data_dir / "dataset", (data_dir / "split.json",))
    key = zoo_cache_key(config, data_hash)
    stage_fp = fingerprint("zoo", key, upstream)
    cache = (Path(config.cache_dir).expanduser() / key).resolve()
    complete = (cache / "zoo.json").is_file()
    damage = zoo_damage(cache) if complete else None
    if damage is not None:
        warnings.warn(f"{damage}; the entry is rebuilt", RunWarning, stacklevel=2)
        complete = False
    if not force and complete and run.is_current("zoo", stage_fp):
        return StageResult(stage_fp, f"zoo reused from {cache}", reused=True)
    run.invalidate("zoo")
    reused_cache = complete and not config.retrain
    if not reused_cache:
        data, split = load_prepared(run)
        build_zoo(config, data, split, cache, run.stage_dir("zoo"), log=log)
    zoo = read_zoo_folder(cache)
    run.mark_complete("zoo", stage_fp, {"cache": str(cache), "key": key, "metrics": zoo.metrics,
                                        "metrics_missing": zoo.metrics_missing,
                                        "models": {n: getattr(zoo, n).path if getattr(zoo, n) else None
                                                   for n in ("clip", "sdxl", "lm", "judge")}})
    origin = "cached" if reused_cache else "built"
    summary = f"zoo {origin} in {cache}" + "".join(f"; {part}" for part in _metric_lines(zoo.metrics, zoo.metrics_missing))
    for name, what in (("t2i_samples.png", "text-to-image samples with the judge's readings"),
                       (HELDOUT_SAMPLES, "held-out items' prompts, generated and real images")):
        if (cache / name).is_file():
            summary += f"; {what}: {cache / name}"
    return StageResult(stage_fp, summary, reused=reused_cache)


def _metric_lines(metrics: dict[str, Any], missing: dict[str, str]) -> list[str]:
    """The figures (``name value``), then the metrics not measured grouped by their reason."""
    lines = [", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
                       if isinstance(v, int | float) and not isinstance(v, bool))]
    by_reason: dict[str, list[str]] = {}
    for name, value in metrics.items():
        if value is None:
            by_reason.setdefault(missing.get(name, "reason not recorded"), []).append(name)
    lines += [f"not measured ({reason}): {', '.join(names)}" for reason, names in by_reason.items()]
    return [line for line in lines if line]


ZOO_STAGE = Stage(
    "zoo",
    "zoo",
    ZooConfig,
    run_zoo_stage,
    "train the tiny model zoo (tokenizers, CLIP, SDXL pipeline, causal LM, attribute judge) or load base models",
)
