"""The zoo's manifest and ``load_zoo``: what later stages call to find the zoo's models.

    zoo = load_zoo(run)                    # or read_zoo_folder(cache folder)
    pipe = zoo.load_sdxl()                 # StableDiffusionXLPipeline
    lm, tokenizer = zoo.load_lm()          # causal LM + its tokenizer (pad token set)
    clip, processor = zoo.load_clip()      # CLIPModel + CLIPProcessor
    judge = zoo.load_judge()               # AttributeJudge (ZooError if the zoo has none)

Each model is a folder or hub id loaded with ``from_pretrained``, whether the zoo trained a
tiny model or ``base_model`` named a real checkpoint. This module imports no model library
(``load_clip``, ``load_sdxl`` and ``load_lm`` do, when called), so the CLI stays quick to start.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pmg.integrity import find_damage
from pmg.runs import RunDirectory
from pmg.zoo.errors import ZooError
from pmg.zoo.judge import AttributeJudge, load_judge

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPModel, CLIPProcessor, PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["ZOO_FORMAT", "ZOO_VERSION", "MODEL_NAMES", "HELDOUT_SAMPLES", "ZooError", "ZooModel", "ZooMetrics", "Zoo", "read_zoo_folder",
           "zoo_damage", "load_zoo"]

ZOO_FORMAT = "pmg-zoo"
# Still 2 with ``metrics_missing`` and null metrics: both are additions an older reader passes
# over, and a v2 entry without them (or with a NaN figure, as zoo.json once held) reads as
# ZooMetrics.from_manifest says, so cache entries and runs that name them keep loading.
ZOO_VERSION = 2
MODEL_NAMES = ("clip", "sdxl", "lm", "judge")
# In an entry: one row per held-out item drawn from its caption, beside its real image.
HELDOUT_SAMPLES = "heldout_samples.png"


@dataclass
class ZooMetrics:
    """The zoo's figures as ``zoo.json`` records them: ``values`` name → a finite number, or
    None for one that could not be measured, with the reason in ``missing`` (``metrics`` and
    ``metrics_missing`` in ``zoo.json``, which is written without NaN)."""

    values: dict[str, float | int | None] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, value: float | int | None, reason: str) -> None:
        """Record ``name``: ``value`` if it is a finite number, else None and ``reason``
        (why it could not be measured)."""
        if value is not None and math.isfinite(value):
            self.values[name] = value
            self.missing.pop(name, None)
        else:
            self.values[name] = None
            self.missing[name] = reason

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> ZooMetrics:
        """The metrics of a ``zoo.json``; a NaN or infinite figure (older entries wrote NaN where
        nothing could be measured) becomes None with that said as its reason."""
        metrics = cls(missing={str(k): str(v) for k, v in (manifest.get("metrics_missing") or {}).items()})
        for name, value in (manifest.get("metrics") or {}).items():
            if isinstance(value, float) and not math.isfinite(value):
                written = "NaN" if math.isnan(value) else str(value)
                metrics.add(name, None, metrics.missing.get(name, f"{written} in zoo.json (an older build could not measure it)"))
            else:
                metrics.values[name] = value
        return metrics


@dataclass(frozen=True)
class ZooModel:
    """Where one model lives: ``path`` a folder or hub id; ``source`` "trained" (a tiny model
    trained by the zoo), "base" (a ``base_model`` used as is) or "finetuned"."""

    path: str
    source: str


@dataclass(frozen=True)
class Zoo:
    """The zoo's models. ``judge`` is None when the dataset has no judged attributes.
    ``heldout_combos`` are the attribute combinations no model saw in training. ``metrics``:
    finite numbers, None where not measured (the reason in ``metrics_missing``)."""

    root: Path
    clip: ZooModel
    sdxl: ZooModel
    lm: ZooModel
    judge: ZooModel | None
    local_files_only: bool = True
    trust_remote_code: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    # Why each metric that is None could not be measured.
    metrics_missing: dict[str, str] = field(default_factory=dict)
    heldout_combos: list[dict[str, str]] = field(default_factory=list)
    heldout_items: list[str] = field(default_factory=list)

    def load_clip(self) -> tuple[CLIPModel, CLIPProcessor]:
        # Lazy: pmg.zoo.loading imports diffusers and the model classes (7 s at CLI start-up).
        from pmg.zoo.loading import load_clip

        return load_clip(self.clip.path, local_files_only=self.local_files_only, trust_remote_code=self.trust_remote_code)

    def load_sdxl(self, torch_dtype: torch.dtype | None = None) -> StableDiffusionXLPipeline:
        # Lazy: pmg.zoo.loading imports diffusers and the model classes (7 s at CLI start-up).
        from pmg.zoo.loading import load_sdxl

        return load_sdxl(self.sdxl.path, local_files_only=self.local_files_only,
                         trust_remote_code=self.trust_remote_code, torch_dtype=torch_dtype)

    def load_lm(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        # Lazy: pmg.zoo.loading imports diffusers and the model classes (7 s at CLI start-up).
        from pmg.zoo.loading import load_lm

        return load_lm(self.lm.path, local_files_only=self.local_files_only, trust_remote_code=self.trust_remote_code)

    def load_judge(self) -> AttributeJudge:
        if self.judge is None:
            raise ZooError(f"the zoo in {self.root} has no attribute judge (the dataset lacks the judged attributes)")
        return load_judge(self.judge.path)


def read_zoo_folder(folder: str | Path) -> Zoo:
    """The ``Zoo`` described by a cache folder's ``zoo.json``; relative model paths resolve
    against the folder, others (``base_model`` ids) are kept as given."""
    folder = Path(folder)
    manifest_path = folder / "zoo.json"
    if not manifest_path.is_file():
        raise ZooError(f"{manifest_path} is missing: {folder} is not a complete zoo (rerun `pmg zoo fit`)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise ZooError(f"{manifest_path} is damaged ({err.msg}); delete {folder} and rerun `pmg zoo fit`") from err
    if manifest.get("format") != ZOO_FORMAT or manifest.get("version") != ZOO_VERSION:
        raise ZooError(f"{manifest_path}: format {manifest.get('format')!r} v{manifest.get('version')!r}, "
                       f"expected {ZOO_FORMAT!r} v{ZOO_VERSION}; rerun `pmg zoo fit`")
    models: dict[str, ZooModel | None] = {}
    for name in MODEL_NAMES:
        entry = manifest.get("models", {}).get(name)
        if entry is None:
            models[name] = None
            continue
        path = entry["path"]
        if entry.get("relative"):
            resolved = folder / path
            if not resolved.is_dir():
                raise ZooError(f"zoo model {name!r} folder {resolved} is missing; delete {folder} and rerun `pmg zoo fit`")
            path = str(resolved)
        models[name] = ZooModel(path=path, source=entry["source"])
    for name in ("clip", "sdxl", "lm"):
        if models[name] is None:
            raise ZooError(f"{manifest_path} lists no {name!r} model")
    # Sizes only here (every command reads the zoo); `pmg pipeline` checks the bytes (zoo_damage).
    damage = find_damage(folder, manifest.get("files") or {}, "the zoo build", sizes_only=True)
    if damage is not None:
        raise ZooError(f"zoo cache file {damage}; rerun `pmg pipeline`, which rebuilds the cache entry")
    metrics = ZooMetrics.from_manifest(manifest)
    return Zoo(
        root=folder,
        clip=models["clip"],  # type: ignore[arg-type]
        sdxl=models["sdxl"],  # type: ignore[arg-type]
        lm=models["lm"],  # type: ignore[arg-type]
        judge=models["judge"],
        local_files_only=bool(manifest.get("local_files_only", True)),
        trust_remote_code=bool(manifest.get("trust_remote_code", False)),
        metrics=metrics.values,
        metrics_missing=metrics.missing,
        heldout_combos=list(manifest.get("heldout_combos", [])),
        heldout_items=list(manifest.get("heldout_items", [])),
    )


def zoo_damage(folder: Path) -> str | None:
    """What is wrong with a complete-looking cache entry (``zoo.json`` present): an unreadable
    manifest, or a file missing or of other size or bytes than ``zoo.json`` recorded; None if intact."""
    manifest_path = folder / "zoo.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{manifest_path} is damaged ({err})"
    if not isinstance(manifest, dict):
        return f"{manifest_path} is damaged (not a JSON object)"
    damage = find_damage(folder, manifest.get("files") or {}, "the zoo build")
    return None if damage is None else f"zoo cache file {damage}"


def load_zoo(run: RunDirectory | str | Path) -> Zoo:
    """The zoo recorded in ``run`` by the zoo stage (``RunError`` if it has not run)."""
    run = run if isinstance(run, RunDirectory) else RunDirectory(run)
    record = run.require("zoo")
    cache = record.get("cache")
    if not cache:
        raise ZooError(f"{run.root / 'zoo' / 'stage.json'} names no zoo cache folder; rerun `pmg zoo fit --run {run.root}`")
    if not Path(cache).is_dir():
        raise ZooError(f"the zoo cache {cache} recorded in {run.root} no longer exists; rerun `pmg zoo fit --run {run.root}`")
    return read_zoo_folder(cache)
