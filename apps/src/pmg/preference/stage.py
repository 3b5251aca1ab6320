"""The preference stage: item features → ``ModalSpecificGNN`` trained as a BPR recommender →
per-user, per-modality preference vectors saved for the quantizer and the generators.

Artifacts in ``<run>/preference/``:

    model.safetensors, model_config.json   the trained ModalSpecificGNN
    user_preferences.safetensors           {modality: [U, d]}, cold_start [U], from_prior [U] (uint8)
    item_embeddings.safetensors            {modality: [I, d]}
    item_features.safetensors              {modality: [I, d_m], "<modality>_mask": [I]}
    user_tastes.json                       ground-truth taste indices per user, when the dataset has them
    metrics.json                           test Recall/NDCG/HitRate@K (history = train + validation)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from prefgraph import InteractionGraph, ModalSpecificGNN, evaluate_ranking
from safetensors.torch import load_file, save_file

from pmg.atomic import atomic_file
from pmg.config import config_to_dict
from pmg.data.dataset_stage import load_prepared
from pmg.data.format import InteractionData
from pmg.data.modules import BPRDataModule
from pmg.data.split import Split
from pmg.features import FeatureEncoderSpec, encode_items
from pmg.preference.module import PreferenceModule
from pmg.runs import RunDirectory, RunError, fingerprint
from pmg.stages import Stage, StageResult
from pmg.training import OptimizerConfig, TrainerConfig, build_trainer

__all__ = [
    "PreferenceModelConfig",
    "PreferenceFeaturesConfig",
    "PreferenceConfig",
    "PreferenceArtifacts",
    "train_preferences",
    "load_preferences",
    "PREFERENCE_STAGE",
]


@dataclass
class PreferenceModelConfig:
    embedding_dim: int = 64
    num_layers: int = 2
    use_id_modality: bool = True
    projection_hidden_dim: int = 128  # 0 = a linear projection of item features
    modality_dropout: float = 0.1
    l2_weight: float = 1e-4
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.2
    contrastive_mode: str = "within_modality"


@dataclass
class PreferenceFeaturesConfig:
    """Item feature encoders (see ``pmg.features``); an empty string drops that modality."""

    visual: str = "pixels"
    textual: str = "minilm"
    cache_dir: str = ".cache/pmg/features"
    batch_size: int = 64
    local_files_only: bool = True
    trust_remote_code: bool = False


@dataclass
class PreferenceConfig:
    model: PreferenceModelConfig = field(default_factory=PreferenceModelConfig)
    features: PreferenceFeaturesConfig = field(default_factory=PreferenceFeaturesConfig)
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=5e-3))
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(max_epochs=40, early_stopping_patience=6))
    batch_size: int = 2048
    eval_batch_size: int = 512
    num_negatives: int = 1
    ks: list[int] = field(default_factory=lambda: [10, 20])

    def validate(self) -> None:
        self.optimizer.validate()
        self.trainer.validate()
        if not self.ks or min(self.ks) < 1:
            raise ValueError("preference.ks must be positive cut-offs")
        if self.batch_size < 1 or self.num_negatives < 1:
            raise ValueError("preference.batch_size and num_negatives must be >= 1")
        for modality in ("visual", "textual"):
            encoder = getattr(self.features, modality)
            if encoder:
                FeatureEncoderSpec(modality, encoder).validate()


@dataclass
class PreferenceArtifacts:
    """What the preference stage hands on: user preferences per modality and item embeddings."""

    user_preferences: dict[str, torch.Tensor]  # modality -> [U, d]
    cold_start: torch.Tensor  # bool [U]
    item_embeddings: dict[str, torch.Tensor]  # modality -> [I, d]
    metrics: dict[str, float]


def _features(config: PreferenceConfig, data: InteractionData) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    values, masks = {}, {}
    for modality in ("visual", "textual"):
        encoder = getattr(config.features, modality)
        if not encoder:
            continue
        spec = FeatureEncoderSpec(
            modality, encoder, batch_size=config.features.batch_size,
            local_files_only=config.features.local_files_only, trust_remote_code=config.features.trust_remote_code,
        )
        encoded = encode_items(data, spec, config.features.cache_dir or None)
        if not encoded.mask.any():
            continue  # e.g. MovieLens without posters: no item has an image
        values[modality], masks[modality] = encoded.values, encoded.mask
    return values, masks


def _build_model(config: PreferenceModelConfig, num_users: int, num_items: int, feature_dims: dict[str, int]) -> ModalSpecificGNN:
    return ModalSpecificGNN(
        num_users, num_items, config.embedding_dim, config.num_layers, feature_dims,
        use_id_modality=config.use_id_modality,
        projection_hidden_dim=config.projection_hidden_dim or None,
        modality_dropout=config.modality_dropout,
        l2_weight=config.l2_weight,
        contrastive_weight=config.contrastive_weight,
        contrastive_temperature=config.contrastive_temperature,
        contrastive_mode=config.contrastive_mode,  # type: ignore[arg-type]
    )


def train_preferences(config: PreferenceConfig, data: InteractionData, split: Split, out: Path) -> PreferenceArtifacts:
    """Fit the model on ``split.train``, keep the best validation-NDCG checkpoint, write artifacts to ``out``."""
    config.validate()
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    features, masks = _features(config, data)
    train_users = torch.from_numpy(data.user[split.train])
    train_items = torch.from_numpy(data.item[split.train])
    graph = InteractionGraph(train_users, train_items, data.num_users, data.num_items, features, masks)
    model = _build_model(config.model, data.num_users, data.num_items, {m: v.shape[1] for m, v in features.items()})
    datamodule = BPRDataModule(
        data, split, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size, num_negatives=config.num_negatives
    )
    module = PreferenceModule(graph, model, config.optimizer, datamodule.val_targets, config.ks)
    monitor = f"val/ndcg@{max(config.ks)}"
    trainer = build_trainer(config.trainer, out, monitor=monitor, mode="max")
    trainer.fit(module, datamodule=datamodule)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        # Our own checkpoint, read without unpickling arbitrary objects.
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    model = module.model.cpu().eval()

    with torch.no_grad():
        emb = model(graph)
        prefs = model.user_preferences(graph, emb)
        history = torch.from_numpy(data.user[split.train.tolist() + split.val.tolist()]), torch.from_numpy(
            data.item[split.train.tolist() + split.val.tolist()]
        )
        eval_graph = InteractionGraph(history[0], history[1], data.num_users, data.num_items, features, masks)
        metrics = evaluate_ranking(model, eval_graph, (torch.from_numpy(data.user[split.test]), torch.from_numpy(data.item[split.test])), config.ks)
    metrics = {f"test/{k}": float(v) for k, v in metrics.items()}
    metrics["best_val_score"] = float(trainer.checkpoint_callback.best_model_score or 0.0) if trainer.checkpoint_callback else 0.0
    metrics["epochs"] = float(trainer.current_epoch)
    artifacts = PreferenceArtifacts(
        user_preferences={m: prefs[m].contiguous() for m in model.modalities},
        cold_start=prefs.cold_start,
        item_embeddings={m: emb.items[m].contiguous() for m in model.modalities},
        metrics=metrics,
    )
    _write(out, model, artifacts, prefs.from_prior, features, masks, data)
    return artifacts


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    with atomic_file(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))


def _write_json(path: Path, value: object) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2))


def _write(out: Path, model: ModalSpecificGNN, artifacts: PreferenceArtifacts, from_prior: torch.Tensor,
           features: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], data: InteractionData) -> None:
    _save(out / "model.safetensors", model.state_dict())
    _write_json(out / "model_config.json", model.get_config())
    _save(out / "user_preferences.safetensors", {
        **artifacts.user_preferences,
        "cold_start": artifacts.cold_start.to(torch.uint8),
        "from_prior": from_prior.to(torch.uint8),
    })
    _save(out / "item_embeddings.safetensors", artifacts.item_embeddings)
    _save(out / "item_features.safetensors", {**features, **{f"{m}_mask": v.to(torch.uint8) for m, v in masks.items()}})
    if data.user_tastes is not None:
        _write_json(out / "user_tastes.json", {name: data.taste_labels(name).tolist() for name in sorted(data.user_tastes)})
    _write_json(out / "metrics.json", artifacts.metrics)


def load_preferences(run: RunDirectory) -> PreferenceArtifacts:
    """The preference stage's artifacts from ``run`` (``RunError`` naming what to run if missing or damaged)."""
    run.require("preference")
    out = run.stage_dir("preference")
    try:
        prefs = load_file(out / "user_preferences.safetensors")
        items = load_file(out / "item_embeddings.safetensors")
        metrics = json.loads((out / "metrics.json").read_text())
    except Exception as err:  # safetensors raises several types for damaged files
        raise RunError(f"preference artifacts in {out} are damaged ({err}); rerun with --force preference") from err
    cold = prefs.pop("cold_start").bool()
    prefs.pop("from_prior", None)
    return PreferenceArtifacts(user_preferences=prefs, cold_start=cold, item_embeddings=items, metrics=metrics)


def _run_preference_stage(config: PreferenceConfig, run: RunDirectory, upstream: str, force: bool) -> StageResult:
    stage_fp = fingerprint("preference", config_to_dict(config), upstream)
    k = max(config.ks)
    if not force and run.is_current("preference", stage_fp):
        record = run.require("preference")
        return StageResult(stage_fp, record["summary"], reused=True)
    run.invalidate("preference")
    data, split = load_prepared(run)
    artifacts = train_preferences(config, data, split, run.stage_dir("preference"))
    m = artifacts.metrics
    summary = (
        f"test recall@{k} {m[f'test/recall@{k}']:.4f}, ndcg@{k} {m[f'test/ndcg@{k}']:.4f} "
        f"after {int(m['epochs'])} epochs; modalities {sorted(artifacts.user_preferences)}; "
        f"{int(artifacts.cold_start.sum())} cold-start users"
    )
    run.mark_complete("preference", stage_fp, {"summary": summary, "metrics": m})
    return StageResult(stage_fp, summary)


PREFERENCE_STAGE = Stage(
    "preference", "preference", PreferenceConfig, _run_preference_stage,
    "learn per-modality user preferences with a graph recommender (BPR)",
)
