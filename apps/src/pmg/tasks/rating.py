"""Rating prediction: a small head on the preference stage's user and item embeddings.

Trained lazily, the first time a run is asked for a rating, and saved beside the run's stages:

    <run>/rating/head.safetensors     the head's weights and input statistics
    <run>/rating/head_config.json     input_dim, hidden_dim, modalities (the input's order)
    <run>/rating/metrics.json         RMSE of the head and of the training-mean baseline (val, test)
    <run>/rating/stage.json           completion record; its fingerprint covers the rating config
                                      and the preference stage's fingerprint, so a new preference
                                      result (or config) retrains the head
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pmg.atomic import atomic_file
from pmg.data.dataset_stage import load_prepared
from pmg.data.format import InteractionData
from pmg.data.split import Split
from pmg.preference.stage import PreferenceArtifacts, load_preferences
from pmg.runs import RunDirectory, RunError, stage_fingerprint
from pmg.tasks.config import RatingConfig
from pmg.tasks.state import lookup_item, lookup_user

__all__ = ["RatingHead", "RatingModel", "RatingPrediction", "RatingEvaluation", "rating_model", "predict_rating",
           "evaluate_rating", "RATING_DIR"]

RATING_DIR = "rating"


class RatingHead(nn.Module):
    """``rating = global_mean + MLP((x − input_mean) / input_std)`` for pair features x [B, F].

    The statistics are buffers, so the saved state dict is the whole head.
    """

    def __init__(self, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.input_dim, self.hidden_dim = input_dim, hidden_dim
        self.net = (nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 1))
                    if hidden_dim > 0 else nn.Linear(input_dim, 1))
        self.register_buffer("input_mean", torch.zeros(input_dim))
        self.register_buffer("input_std", torch.ones(input_dim))
        self.register_buffer("global_mean", torch.zeros(()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Predicted ratings [B] of pair features [B, F]."""
        return self.global_mean + self.net((features - self.input_mean) / self.input_std).squeeze(-1)


def pair_features(prefs: PreferenceArtifacts, modalities: list[str], users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Per-modality products ``pref_u^m ⊙ item_i^m`` concatenated: [B, M·d] for ``users``, ``items`` [B]."""
    return torch.cat([prefs.user_preferences[m][users] * prefs.item_embeddings[m][items] for m in modalities], dim=1)


@dataclass
class RatingModel:
    """The trained head with the embeddings it reads and its metrics."""

    head: RatingHead
    modalities: list[str]
    prefs: PreferenceArtifacts
    metrics: dict[str, float]

    @torch.no_grad()
    def predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Predicted ratings [B] of data indices ``users``, ``items`` [B]."""
        return self.head(pair_features(self.prefs, self.modalities, users, items))


def _rated(data: InteractionData, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(users [R], items [R], ratings float32 [R]) of the rows of ``rows`` that carry a rating."""
    rows = rows[np.isfinite(data.rating[rows])]
    return torch.from_numpy(data.user[rows]), torch.from_numpy(data.item[rows]), torch.from_numpy(data.rating[rows])


def _rmse(predicted: torch.Tensor, target: torch.Tensor) -> float:
    return float(((predicted - target) ** 2).mean().sqrt()) if len(target) else math.nan


def train_rating_head(config: RatingConfig, prefs: PreferenceArtifacts, data: InteractionData, split: Split) -> RatingModel:
    """Fit the head on the training ratings (full batch, seeded); keep the epoch of best validation RMSE.

    Metrics: ``{val,test}/rmse`` of the head and ``{val,test}/rmse_global_mean`` of predicting the
    mean training rating, on the rated rows of each split; NaN where a split has none.
    """
    config.validate()
    train_u, train_i, train_r = _rated(data, split.train)
    if len(train_r) == 0:
        raise RunError(f"dataset {data.name!r} has no rated training interactions: rating prediction needs ratings")
    modalities = sorted(prefs.item_embeddings)
    torch.manual_seed(config.seed)
    train_x = pair_features(prefs, modalities, train_u, train_i)
    head = RatingHead(train_x.shape[1], config.hidden_dim)
    head.input_mean.copy_(train_x.mean(0))
    head.input_std.copy_(train_x.std(0).nan_to_num(1.0).clamp_min(1e-6))
    head.global_mean.fill_(float(train_r.mean()))
    evaluated = {name: _rated(data, rows) for name, rows in (("val", split.val), ("test", split.test))}
    features = {name: pair_features(prefs, modalities, u, i) for name, (u, i, _) in evaluated.items()}
    optimizer = torch.optim.Adam(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    best_rmse, best_state, best_epoch = math.inf, None, config.epochs
    for epoch in range(1, config.epochs + 1):
        head.train()
        optimizer.zero_grad()
        loss = ((head(train_x) - train_r) ** 2).mean()
        loss.backward()
        optimizer.step()
        if len(evaluated["val"][2]):
            head.eval()
            with torch.no_grad():
                val_rmse = _rmse(head(features["val"]), evaluated["val"][2])
            if val_rmse < best_rmse:
                best_rmse, best_epoch = val_rmse, epoch
                best_state = {k: v.clone() for k, v in head.state_dict().items()}
    if best_state is not None:  # without validation ratings the last epoch is kept
        head.load_state_dict(best_state)
    head.eval()
    metrics: dict[str, float] = {"best_epoch": float(best_epoch), "train/rows": float(len(train_r))}
    with torch.no_grad():
        for name, (_, _, ratings) in evaluated.items():
            metrics[f"{name}/rows"] = float(len(ratings))
            metrics[f"{name}/rmse"] = _rmse(head(features[name]), ratings)
            metrics[f"{name}/rmse_global_mean"] = _rmse(head.global_mean.expand(len(ratings)), ratings)
    return RatingModel(head, modalities, prefs, metrics)


def _write(out: Path, model: RatingModel) -> None:
    with atomic_file(out / "head.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in model.head.state_dict().items()}, str(tmp))
    head_config = {"input_dim": model.head.input_dim, "hidden_dim": model.head.hidden_dim, "modalities": model.modalities}
    with atomic_file(out / "head_config.json") as tmp:
        tmp.write_text(json.dumps(head_config, indent=2))
    with atomic_file(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(model.metrics, indent=2))


def _read(out: Path, prefs: PreferenceArtifacts) -> RatingModel:
    try:
        head_config = json.loads((out / "head_config.json").read_text())
        head = RatingHead(head_config["input_dim"], head_config["hidden_dim"])
        head.load_state_dict(load_file(out / "head.safetensors"))
        metrics = json.loads((out / "metrics.json").read_text())
    except Exception as err:  # json, safetensors and load_state_dict raise several types
        raise RunError(f"rating head in {out} is damaged ({err}); delete {out} to retrain it") from err
    return RatingModel(head.eval(), head_config["modalities"], prefs, metrics)


def rating_model(run: RunDirectory, config: RatingConfig, *, log: Callable[[str], None] = print,
                 command: str = "pmg rate") -> RatingModel:
    """The run's rating head: reloaded when trained with ``config`` on the current preference
    result, else trained now (seeded, so the same inputs give the same head) and saved, under
    the run's lock (``command`` is what it names to another writer)."""
    config.validate()
    stage_fp = stage_fingerprint(RATING_DIR, config, run.require("preference")["fingerprint"])
    prefs = load_preferences(run)
    out = run.stage_dir(RATING_DIR)
    if run.is_current(RATING_DIR, stage_fp):
        return _read(out, prefs)
    with run.lock(command):
        run.invalidate(RATING_DIR)
        data, split = load_prepared(run)
        model = train_rating_head(config, prefs, data, split)
        _write(out, model)
        m = model.metrics
        summary = f"test RMSE {m['test/rmse']:.4f} (training-mean baseline {m['test/rmse_global_mean']:.4f})"
        run.mark_complete(RATING_DIR, stage_fp, {"summary": summary, "metrics": m})
    log(f"[rating] head trained: {summary}; saved in {out}")
    return model


@dataclass(frozen=True)
class RatingPrediction:
    user_id: str
    item_id: str
    title: str
    predicted: float
    observed: float | None  # the user's own rating of the item, when the dataset has one
    global_mean: float


@dataclass(frozen=True)
class RatingEvaluation:
    """RMSE on the rated test rows: the head against predicting the mean training rating."""

    rmse: float
    rmse_global_mean: float
    test_rows: int


def predict_rating(run: RunDirectory, data: InteractionData, model: RatingModel, user_id: str, item_id: str) -> RatingPrediction:
    """The head's rating of ``item_id`` by ``user_id`` (unknown ids: ``RunError`` saying where ids are)."""
    user, item = lookup_user(run, data, user_id), lookup_item(run, data, item_id)
    predicted = float(model.predict(torch.tensor([user]), torch.tensor([item]))[0])
    rated = np.flatnonzero((data.user == user) & (data.item == item) & np.isfinite(data.rating))
    observed = float(data.rating[rated[-1]]) if len(rated) else None  # the latest rating
    return RatingPrediction(user_id, item_id, data.items[item].title, predicted, observed, float(model.head.global_mean))


def evaluate_rating(model: RatingModel) -> RatingEvaluation:
    """The test RMSE figures recorded when the head was trained."""
    m = model.metrics
    return RatingEvaluation(m["test/rmse"], m["test/rmse_global_mean"], int(m["test/rows"]))
