"""The preference stage: item features → ``ModalSpecificGNN`` trained as a BPR recommender →
per-user, per-modality preference vectors saved for the quantizer and the generators.

Artifacts in ``<run>/preference/``:

    model.safetensors, model_config.json   the trained ModalSpecificGNN
    user_preferences.safetensors           {modality: [U, d]}, cold_start [U], from_prior [U] (uint8);
                                           cold_start: no training interaction (vector inferred from the
                                           user's validation items, or the population prior: from_prior)
    item_embeddings.safetensors            {modality: [I, d]}
    item_features.safetensors              {modality: [I, d_m], "<modality>_mask": [I]}
    user_tastes.json                       ground-truth taste indices per user, when the dataset has them
    config.yaml                            the stage's config, feature encoders resolved (``zoo`` → ``clip:<folder>``)
    metrics.json                           test Recall/NDCG/HitRate@K (train + validation items masked),
                                           best validation NDCG, epochs, counts of cold-start users and of
                                           items without interactions / image / text
    checkpoints/, tb/                      Lightning checkpoints (best by val NDCG, last; in a run, also the one a
                                           killed fit resumes from, ``pmg.training.Resumable``) and TensorBoard logs
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn
from safetensors.torch import load_file, save_file

from pmg.atomic import atomic_file
from pmg.config import config_to_yaml
from pmg.data.dataset_stage import load_prepared, load_user_roles
from pmg.data.format import InteractionData
from pmg.data.modules import BPRDataModule
from pmg.data.ratings import InteractionWeight, interaction_weights
from pmg.data.split import Split
from pmg.features import FeatureEncoderSpec, encode_items
from pmg.preference.module import PreferenceModule
from pmg.runs import RunDirectory, RunError, stage_fingerprint
from pmg.stages import Stage, StageResult, complete_stage, reuse_or_clear
from pmg.training import OptimizerConfig, TrainerConfig, build_trainer, resume_point
from pmg.zoo import load_zoo
from prefgraph import (
    InteractionGraph,
    ModalSpecificGNN,
    content_preferences,
    evaluate_ranking,
    principal_components,
)

ZOO_ENCODER = "zoo"  # a feature encoder name: the run's zoo CLIP

__all__ = [
    "ContrastiveMode",
    "PreferenceModelConfig",
    "PreferenceFeaturesConfig",
    "PreferenceConfig",
    "UserVector",
    "preference_graph",
    "interaction_pairs",
    "PreferenceArtifacts",
    "train_preferences",
    "load_preferences",
    "PREFERENCE_STAGE",
]


class ContrastiveMode(StrEnum):
    """``preference.model.contrastive_mode``, the values :class:`prefgraph.ModalSpecificGNN` takes:
    ``within_modality`` contrasts each modality's user vector with the same modality's positive
    item (views stay specific); ``cross_modality`` aligns one user's modalities."""

    within_modality = "within_modality"
    cross_modality = "cross_modality"


@dataclass
class PreferenceModelConfig:
    embedding_dim: int = 64
    num_layers: int = 2
    use_id_modality: bool = True
    projection_hidden_dim: int = 128  # 0 = a linear projection of item features
    modality_dropout: float = 0.1
    l2_weight: float = 1e-4
    # Free item ids memorise the catalog's training graph: 100x the feature modalities' L2 (see benchmarks/preference.py).
    id_l2_weight: float = 1e-2  # < 0: the same as l2_weight
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.2
    contrastive_mode: ContrastiveMode = ContrastiveMode.within_modality

    def validate(self) -> None:
        if self.contrastive_mode not in tuple(ContrastiveMode):  # a config built directly in Python
            raise ValueError(f"preference.model.contrastive_mode must be one of {[m.value for m in ContrastiveMode]}, "
                             f"not {self.contrastive_mode!r}")


@dataclass
class PreferenceFeaturesConfig:
    """Item feature encoders (see ``pmg.features``); an empty string drops that modality.

    ``zoo`` names the run's own CLIP (the zoo stage's): its image tower for ``visual``, its
    text tower for ``textual``. It is resolved to ``clip:<folder>`` when the stage runs
    (:func:`resolve_zoo_encoders`), so the feature cache follows the zoo's weights.
    """

    visual: str = "pixels"
    textual: str = "minilm"
    cache_dir: str = ".cache/pmg/features"
    batch_size: int = 64
    local_files_only: bool = True
    trust_remote_code: bool = False


class UserVector(StrEnum):
    """What the stage hands on as a user's visual and textual preference (``preference.user_vector``):
    ``gnn``, the trained model's propagated user vector; ``content``, the mean of the history
    items' content vectors weighted by ``content_weight`` (the top ``model.embedding_dim`` principal components of the raw
    item features; :func:`prefgraph.content_preferences`), which keeps what the items show and say
    where short histories leave BPR little to learn it from. With ``content`` the item vectors saved
    for those modalities are the same components, so users and items share a space. The ``id``
    modality and the recommender's scores are the model's either way."""

    gnn = "gnn"
    content = "content"


@dataclass
class PreferenceConfig:
    model: PreferenceModelConfig = field(default_factory=PreferenceModelConfig)
    features: PreferenceFeaturesConfig = field(default_factory=PreferenceFeaturesConfig)
    user_vector: UserVector = UserVector.gnn
    # How much each interaction counts (pmg.data.ratings.InteractionWeight) in a content vector and
    # in the graph's propagation. BPR's positives and the metrics count every interaction either way.
    content_weight: InteractionWeight = InteractionWeight.rating
    edge_weight: InteractionWeight = InteractionWeight.binary
    rating_offset: float = 2.0
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=5e-3))
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(max_epochs=40, early_stopping_patience=6))
    batch_size: int = 2048
    eval_batch_size: int = 512
    num_negatives: int = 1
    ks: list[int] = field(default_factory=lambda: [10, 20])
    # torch intra-op CPU threads while the model fits (0 keeps torch's setting; the feature
    # encoders before it use torch's own). The stage's
    # sparse propagation and small matmuls gain little from threads, and on a CPU shared with
    # other jobs several threads oversubscribe it: one thread was ~20x faster per step here.
    num_threads: int = 1

    def validate(self) -> None:
        self.model.validate()
        self.optimizer.validate()
        self.trainer.validate()
        for key, kind in (("user_vector", UserVector), ("content_weight", InteractionWeight), ("edge_weight", InteractionWeight)):
            if getattr(self, key) not in tuple(kind):  # a config built directly in Python
                raise ValueError(f"preference.{key} must be one of {[m.value for m in kind]}, not {getattr(self, key)!r}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError("preference.ks must be positive cut-offs")
        if self.batch_size < 1 or self.num_negatives < 1:
            raise ValueError("preference.batch_size and num_negatives must be >= 1")
        if self.num_threads < 0:
            raise ValueError("preference.num_threads must be >= 0 (0 keeps torch's setting)")
        for modality in ("visual", "textual"):
            encoder = getattr(self.features, modality)
            if encoder and encoder != ZOO_ENCODER:
                FeatureEncoderSpec(modality, encoder).validate()


def resolve_zoo_encoders(config: PreferenceConfig, run: RunDirectory) -> PreferenceConfig:
    """``config`` with each ``zoo`` feature encoder replaced by ``clip:<the run's zoo CLIP folder>``."""
    if ZOO_ENCODER not in (config.features.visual, config.features.textual):
        return config
    clip = f"clip:{load_zoo(run).clip.path}"
    features = replace(
        config.features,
        **{m: clip for m in ("visual", "textual") if getattr(config.features, m) == ZOO_ENCODER},
    )
    return replace(config, features=features)


@dataclass
class PreferenceArtifacts:
    """What the preference stage hands on: user preferences per modality and item embeddings."""

    user_preferences: dict[str, torch.Tensor]  # modality -> [U, d]
    cold_start: torch.Tensor  # bool [U]: no training interaction; the vector is inferred
    item_embeddings: dict[str, torch.Tensor]  # modality -> [I, d]
    metrics: dict[str, float]
    from_prior: torch.Tensor | None = None  # bool [U]: cold start with no item at all -> population prior


def item_features(config: PreferenceConfig, data: InteractionData) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The configured item features: ``({modality: float32 [I, d_m]}, {modality: bool [I]})``.

    A modality no item has (e.g. MovieLens without posters) is left out, with a message.
    """
    values, masks = {}, {}
    for modality in ("visual", "textual"):
        encoder = getattr(config.features, modality)
        if not encoder:
            continue
        if encoder == ZOO_ENCODER:
            raise ValueError(
                f"preference.features.{modality} is 'zoo' but no zoo is at hand: run the stage on a run directory "
                "whose zoo stage has completed, or name an encoder (pixels, words, minilm, clip:<folder>)"
            )
        spec = FeatureEncoderSpec(
            modality, encoder, batch_size=config.features.batch_size,
            local_files_only=config.features.local_files_only, trust_remote_code=config.features.trust_remote_code,
        )
        encoded = encode_items(data, spec, config.features.cache_dir or None)
        if not encoded.mask.any():
            # e.g. MovieLens without posters: no item has an image
            rank_zero_info(f"preference: no item of {data.name!r} has {modality} input; the {modality} modality is left out")
            continue
        values[modality], masks[modality] = encoded.values, encoded.mask
    return values, masks


def build_model(config: PreferenceModelConfig, num_users: int, num_items: int, feature_dims: dict[str, int]) -> ModalSpecificGNN:
    """The ``ModalSpecificGNN`` of ``config`` for ``feature_dims`` ``{modality: d_m}``."""
    return ModalSpecificGNN(
        num_users, num_items, config.embedding_dim, config.num_layers, feature_dims,
        use_id_modality=config.use_id_modality,
        projection_hidden_dim=config.projection_hidden_dim or None,
        modality_dropout=config.modality_dropout,
        l2_weight=config.l2_weight,
        id_l2_weight=None if config.id_l2_weight < 0 else config.id_l2_weight,
        contrastive_weight=config.contrastive_weight,
        contrastive_temperature=config.contrastive_temperature,
        contrastive_mode=config.contrastive_mode.value,
    )


def interaction_pairs(data: InteractionData, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(user_index [P], item_index [P]) of the interaction rows ``rows``."""
    return torch.from_numpy(data.user[rows]), torch.from_numpy(data.item[rows])


def edge_weights(kind: InteractionWeight, rating_offset: float, data: InteractionData, rows: np.ndarray) -> torch.Tensor | None:
    """Float [P] weights of the interaction rows ``rows`` (None: binary); see :class:`pmg.data.ratings.InteractionWeight`.

    Raises:
        ValueError: ``rating`` weights on a dataset none of whose ``rows`` has a rating.
    """
    weights = interaction_weights(kind, data, rows, rating_offset, key="preference.edge_weight or content_weight")
    return torch.from_numpy(weights) if weights is not None else None


def preference_graph(config: PreferenceConfig, data: InteractionData, rows: np.ndarray,
                     features: dict[str, torch.Tensor] | None = None,
                     masks: dict[str, torch.Tensor] | None = None) -> InteractionGraph:
    """The graph the preference model propagates over: the interaction rows ``rows`` (the training
    split), their :func:`edge_weights`, and the item features. Training and every later use of the
    trained model (scoring, tasks) build it here, so they propagate alike."""
    return InteractionGraph(*interaction_pairs(data, rows), data.num_users, data.num_items, features, masks,
                            edge_weight=edge_weights(config.edge_weight, config.rating_offset, data, rows))


def _check_split(config: PreferenceConfig, data: InteractionData, split: Split) -> None:
    """Refuse, with what to change, a split this stage cannot train or select a checkpoint on."""
    sizes = f"train {len(split.train)}, validation {len(split.val)}, test {len(split.test)} rows"
    if len(split.train) == 0:
        raise ValueError(f"preference: dataset {data.name!r} is too small for its split ({sizes}): no training interactions")
    if len(split.val) == 0:
        raise ValueError(
            f"preference: dataset {data.name!r} has no validation interactions ({sizes}); the best checkpoint and "
            "early stopping are chosen on validation NDCG: use a split with validation rows (data.split)"
        )
    if data.num_items < 2:
        raise ValueError(f"preference: dataset {data.name!r} has {data.num_items} item(s); ranking needs at least 2")
    if max(config.ks) > data.num_items:
        raise ValueError(f"preference.ks {config.ks} exceeds the {data.num_items} items of dataset {data.name!r}")


def _data_notes(data: InteractionData, split: Split, masks: dict[str, torch.Tensor]) -> dict[str, float]:
    """Counts of the unusual inputs the stage copes with, for metrics.json and the summary."""
    train_user_degree = np.bincount(data.user[split.train], minlength=data.num_users)
    any_user_degree = np.bincount(data.user, minlength=data.num_users)
    train_item_degree = np.bincount(data.item[split.train], minlength=data.num_items)
    notes = {
        "users_without_interactions": float((any_user_degree == 0).sum()),
        "users_only_in_val_or_test": float(((train_user_degree == 0) & (any_user_degree > 0)).sum()),
        "items_without_train_interactions": float((train_item_degree == 0).sum()),
    }
    for modality in ("visual", "textual"):
        notes[f"items_without_{modality}"] = float((~masks[modality]).sum()) if modality in masks else float(data.num_items)
    return notes


def train_preferences(
    config: PreferenceConfig, data: InteractionData, split: Split, out: Path, *, callbacks: Sequence[Callback] = (),
    validation_users: np.ndarray | None = None, resume_key: str | None = None,
) -> PreferenceArtifacts:
    """Fit the model on ``split.train``, keep the best validation-NDCG checkpoint, write artifacts to ``out``.

    ``validation_users`` (data user indices; None: all): the users whose validation items choose
    the checkpoint and stop the fit; the pipeline leaves out the evaluation users (``data.users``).

    Cold start: users without training interactions are flagged; those with validation
    interactions get the mean embedding of those items (a fold-in from their few items), the
    rest (no interactions, or test ones only, which stay held out) the population prior. Test
    metrics rank every item not in the user's train + validation history, with the model's
    propagation over the training graph (the graph it was trained and validated on).

    Under multi-process strategies (``ddp``) only global rank 0 writes the artifacts.
    ``callbacks`` are extra Lightning callbacks (they must be picklable for ``ddp_spawn``).
    ``resume_key`` (the stage fingerprint, in a run): the fit checkpoints to resume from and
    resumes a checkpoint left under ``out/checkpoints`` for the same key by a killed fit
    (``pmg.training.Resumable``); None: a fresh fit, no resume checkpoints.
    """
    config.validate()
    _check_split(config, data, split)
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    # The feature encoders (MiniLM, CLIP: dense matmuls) run with torch's threads; only the fit is limited.
    features, masks = item_features(config, data)
    threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        return _fit_and_write(config, data, split, out, callbacks, features, masks, validation_users, resume_key)
    finally:
        torch.set_num_threads(threads)


def _fit_and_write(
    config: PreferenceConfig, data: InteractionData, split: Split, out: Path, callbacks: Sequence[Callback],
    features: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], validation_users: np.ndarray | None,
    resume_key: str | None,
) -> PreferenceArtifacts:
    notes = _data_notes(data, split, masks)
    for modality, mask in masks.items():
        if not mask.all():
            rank_zero_warn(
                f"preference: {int((~mask).sum())} of {data.num_items} items have no {modality} input; "
                f"they use the learned 'missing {modality}' vector"
            )
    if notes["users_without_interactions"] or notes["users_only_in_val_or_test"]:
        rank_zero_warn(
            f"preference: {int(notes['users_without_interactions'])} users have no interactions and "
            f"{int(notes['users_only_in_val_or_test'])} only held-out ones; they are flagged cold_start and get "
            "a preference from their validation items or the population prior"
        )
    graph = preference_graph(config, data, split.train, features, masks)
    model = build_model(config.model, data.num_users, data.num_items, {m: v.shape[1] for m, v in features.items()})
    datamodule = BPRDataModule(
        data, split, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size, num_negatives=config.num_negatives,
        validation_users=validation_users,
    )
    module = PreferenceModule(graph, model, config.optimizer, datamodule.val_targets, config.ks)
    monitor = f"val/ndcg@{max(config.ks)}"
    resumable, start = resume_point(out / "checkpoints", resume_key, config.trainer.checkpoint_every_n_steps, "preference")
    trainer = build_trainer(config.trainer, out, monitor=monitor, mode="max", callbacks=callbacks, resumable=resumable)
    trainer.fit(module, datamodule=datamodule, ckpt_path=start, weights_only=True)
    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if checkpoint is not None else ""
    best_score = None
    if best_path:
        # Our own checkpoint, read without unpickling arbitrary objects.
        saved = torch.load(best_path, map_location="cpu", weights_only=True)
        module.load_state_dict(saved["state_dict"])
        best_score = checkpoint.best_model_score
        if best_score is None:  # not carried back from ddp_spawn workers: read it from the checkpoint
            best_score = next((v.get("best_model_score") for k, v in saved.get("callbacks", {}).items()
                               if k.startswith("ModelCheckpoint")), None)
    model = module.model.cpu().eval()
    graph = graph.to("cpu")

    with torch.no_grad():
        emb = model(graph)
        val_pairs = interaction_pairs(data, split.val)
        # Validation items fold in users who have no training edge; warm users' pairs are ignored.
        prefs = model.user_preferences(graph, emb, cold_start_history=val_pairs)
        history = np.concatenate([split.train, split.val])
        history_graph = InteractionGraph(*interaction_pairs(data, history), data.num_users, data.num_items)
        test_metrics = evaluate_ranking(
            model.scorer(graph, emb, cold_start_history=val_pairs), history_graph, interaction_pairs(data, split.test), config.ks
        )
        user_vectors = {m: prefs[m] for m in model.modalities}
        item_vectors = {m: emb.items[m] for m in model.modalities}
        if config.user_vector is UserVector.content:
            components = {m: principal_components(features[m], masks[m], min(model.embedding_dim, *features[m].shape))
                          for m in model.feature_dims}
            weighted = graph if config.content_weight is config.edge_weight else InteractionGraph(
                *interaction_pairs(data, split.train), data.num_users, data.num_items,
                edge_weight=edge_weights(config.content_weight, config.rating_offset, data, split.train))
            user_vectors |= content_preferences(weighted, components, cold_start_history=val_pairs).embeddings
            item_vectors |= components
    metrics = {f"test/{k}": float(v) for k, v in test_metrics.items()}
    metrics["best_val_score"] = float(best_score) if best_score is not None else float("nan")
    metrics["epochs"] = float(max(trainer.current_epoch, _epochs_in_last_checkpoint(out)))
    metrics["cold_start_users"] = float(prefs.cold_start.sum())
    metrics["prior_users"] = float(prefs.from_prior.sum())
    metrics.update(notes)
    artifacts = PreferenceArtifacts(
        user_preferences={m: v.contiguous() for m, v in user_vectors.items()},
        cold_start=prefs.cold_start,
        item_embeddings={m: v.contiguous() for m, v in item_vectors.items()},
        metrics=metrics,
        from_prior=prefs.from_prior,
    )
    if trainer.is_global_zero:
        _write(out, model, artifacts, features, masks, data)
    return artifacts


def _epochs_in_last_checkpoint(out: Path) -> int:
    """Epochs trained according to ``last.ckpt``; ``ddp_spawn`` does not carry the epoch counter
    back to the main process, the checkpoint does. Its fit loop's count, not its ``epoch``: that
    is one ahead when ``last.ckpt`` is written at the end of the fit (a resumed fit writes it then)."""
    path = out / "checkpoints" / "last.ckpt"
    if not path.is_file():
        return 0
    saved = torch.load(path, map_location="cpu", weights_only=True)
    progress = saved.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    return int(progress.get("processed", int(saved.get("epoch", -1)) + 1))


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    with atomic_file(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))


def _write_json(path: Path, value: object) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2))


def _write(out: Path, model: ModalSpecificGNN, artifacts: PreferenceArtifacts,
           features: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], data: InteractionData) -> None:
    _save(out / "model.safetensors", model.state_dict())
    _write_json(out / "model_config.json", model.get_config())
    _save(out / "user_preferences.safetensors", {
        **artifacts.user_preferences,
        "cold_start": artifacts.cold_start.to(torch.uint8),
        "from_prior": artifacts.from_prior.to(torch.uint8),
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
    prior = prefs.pop("from_prior", None)
    return PreferenceArtifacts(
        user_preferences=prefs, cold_start=cold, item_embeddings=items, metrics=metrics,
        from_prior=prior.bool() if prior is not None else None,
    )


def _run_preference_stage(config: PreferenceConfig, run: RunDirectory, upstream: str, force: bool) -> StageResult:
    stage_fp = stage_fingerprint("preference", config, upstream)
    k = max(config.ks)
    if (reused := reuse_or_clear(run, "preference", stage_fp, force, resumable=True)) is not None:
        return reused
    data, split = load_prepared(run)
    roles = load_user_roles(run, data)
    resolved = resolve_zoo_encoders(config, run)
    artifacts = train_preferences(resolved, data, split, run.stage_dir("preference"),
                                  validation_users=np.concatenate([roles.training, roles.selection]), resume_key=stage_fp)
    m = artifacts.metrics
    summary = (
        f"test recall@{k} {m[f'test/recall@{k}']:.4f}, ndcg@{k} {m[f'test/ndcg@{k}']:.4f} "
        f"after {int(m['epochs'])} epochs; modalities {sorted(artifacts.user_preferences)}; "
        f"{int(artifacts.cold_start.sum())} cold-start users ({int(m['prior_users'])} from the prior)"
    )
    if rank_zero_only.rank == 0:  # under `strategy: ddp` every rank runs this function
        # The resolved config names the item feature encoders, which `pmg search` applies to queries.
        with atomic_file(run.stage_dir("preference") / "config.yaml") as tmp:
            tmp.write_text(config_to_yaml(resolved))
        return complete_stage(run, "preference", stage_fp, summary, metrics=m)
    return StageResult(stage_fp, summary)


PREFERENCE_STAGE = Stage(
    "preference", "preference", PreferenceConfig, _run_preference_stage,
    "learn per-modality user preferences with a graph recommender (BPR)",
)
